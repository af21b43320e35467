//! Certificates: the plants' certificate authority, the hub's server certificate, plant client
//! certificates, and reading a plant's identity back from a verified certificate.
//!
//! A plant's identity is the URI `urn:holdfast:plant:<ID>` in its certificate's subject
//! alternative names, and nothing else: never a field of a payload (invariant I6).
//! Files written here: `ca.pem`/`ca.key`, `hub.pem`/`hub.key`, `<plant>.pem` (and with `issue`,
//! for development, `<plant>.key`); every key file is created with mode 0600. In production a
//! plant's key is made on its gateway (`holdfast-agent certs request`) and only its signing
//! request comes here (`sign`): the key never leaves the gateway.
//!
//! Every plant certificate's serial number carries the moment it was issued
//! ([`holdfast_protocol::identity::issued_at_ms`]), so a revocation can refuse every
//! certificate a plant was issued before it and accept those signed afterwards.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

pub use holdfast_protocol::identity::{ALPN, PLANT_URI_PREFIX, SERIAL_TAG, issued_at_ms, plant_of, valid_plant_id};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite a certificate authority")]
    Exists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("plant id {0:?} must be 1 to 64 characters of a-z, 0-9 and '-'")]
    PlantId(String),
    #[error("{path}: not a valid certificate signing request ({source}); make one with `holdfast-agent certs request`")]
    Request { path: PathBuf, source: rcgen::Error },
    #[error("{path} asks for plant {asked:?}, not {plant:?}; sign a request made for this plant")]
    RequestPlant { path: PathBuf, asked: String, plant: String },
}

/// Creates a certificate authority and the hub's server certificate in `dir`.
/// `hub_names` are the DNS names and IP addresses agents use to reach the hub.
pub fn init(dir: &Path, hub_names: &[String]) -> Result<(), CertError> {
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(CertError::Exists { path: ca_key_path });
    }
    fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_owned(), source })?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "Holdfast plant CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = params.self_signed(&ca_key)?;
    write_key(&ca_key_path, &ca_key.serialize_pem())?;
    write(&dir.join("ca.pem"), &ca_cert.pem())?;

    let issuer = Issuer::new(params, ca_key);
    let hub_key = KeyPair::generate()?;
    let mut hub = CertificateParams::new(hub_names.to_vec())?;
    hub.distinguished_name.push(DnType::CommonName, "holdfast-hub");
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let hub_cert = hub.signed_by(&hub_key, &issuer)?;
    write_key(&dir.join("hub.key"), &hub_key.serialize_pem())?;
    write(&dir.join("hub.pem"), &hub_cert.pem())?;
    Ok(())
}

/// How long a plant certificate is valid by default.
pub const PLANT_CERT_DAYS: u32 = 365;

/// Issues a client certificate and its key for `plant`, valid for `days` from now, signed by the
/// authority in `dir`: for development, where one machine holds everything. Returns the paths of
/// the certificate and its key.
pub fn issue(dir: &Path, plant: &str, days: u32) -> Result<(PathBuf, PathBuf), CertError> {
    let now = time::OffsetDateTime::now_utc();
    issue_valid(dir, plant, now - time::Duration::minutes(5), now + time::Duration::days(i64::from(days)))
}

/// [`issue`] with an explicit validity (tests use it for expired certificates).
pub fn issue_valid(
    dir: &Path,
    plant: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<(PathBuf, PathBuf), CertError> {
    let params = plant_params(plant, not_before, not_after)?;
    let issuer = load_issuer(dir)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join(format!("{plant}.pem")), dir.join(format!("{plant}.key")));
    write_key(&key_path, &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

/// Signs a gateway's certificate signing request for `plant`, valid for `days`, with the
/// authority in `dir`, and writes the certificate to `out`. Only the request's public key is
/// taken: the plant, usage and validity are this authority's. A request naming another plant
/// is refused.
pub fn sign(dir: &Path, csr_path: &Path, plant: &str, days: u32, out: &Path) -> Result<(), CertError> {
    let text = fs::read_to_string(csr_path).map_err(|source| CertError::Io { path: csr_path.to_owned(), source })?;
    let mut csr = CertificateSigningRequestParams::from_pem(&text)
        .map_err(|source| CertError::Request { path: csr_path.to_owned(), source })?;
    for san in &csr.params.subject_alt_names {
        if let SanType::URI(uri) = san
            && let Some(asked) = uri.as_str().strip_prefix(PLANT_URI_PREFIX)
            && asked != plant
        {
            return Err(CertError::RequestPlant {
                path: csr_path.to_owned(),
                asked: asked.to_owned(),
                plant: plant.to_owned(),
            });
        }
    }
    let now = time::OffsetDateTime::now_utc();
    csr.params = plant_params(plant, now - time::Duration::minutes(5), now + time::Duration::days(i64::from(days)))?;
    let cert = csr.signed_by(&load_issuer(dir)?)?;
    write(out, &cert.pem())
}

/// A plant certificate's contents: its identity URI, client authentication only, the validity,
/// and a serial number carrying the moment of issue.
fn plant_params(
    plant: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<CertificateParams, CertError> {
    if !valid_plant_id(plant) {
        return Err(CertError::PlantId(plant.to_owned()));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, format!("holdfast plant {plant}"));
    params.subject_alt_names = vec![SanType::URI(format!("{PLANT_URI_PREFIX}{plant}").try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let issued_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
    let mut serial = vec![SERIAL_TAG];
    serial.extend_from_slice(&issued_ms.to_be_bytes());
    serial.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?)?;
    Ok(Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key)?)
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    fs::write(path, text).map_err(|source| CertError::Io { path: path.to_owned(), source })
}

fn write_key(path: &Path, text: &str) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_owned(), source };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issued_certificates_name_their_plant_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (cert, key) = issue(dir.path(), "plant-a", PLANT_CERT_DAYS).unwrap();
        let pem = fs::read(&cert).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .unwrap();
        assert_eq!(plant_of(&der).unwrap(), "plant-a");
        for k in [key, dir.path().join("ca.key"), dir.path().join("hub.key")] {
            assert_eq!(fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600, "{k:?}");
        }
        let hub = fs::read(dir.path().join("hub.pem")).unwrap();
        let hub_der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&hub).unwrap();
        assert_eq!(plant_of(&hub_der).unwrap_err(), "the certificate names no plant (no urn:holdfast:plant:<id> URI)");
    }

    fn request(dir: &Path, plant: &str) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(format!("{PLANT_URI_PREFIX}{plant}").try_into().unwrap())];
        let path = dir.join(format!("{plant}.csr"));
        fs::write(&path, params.serialize_request(&key).unwrap().pem().unwrap()).unwrap();
        path
    }

    #[test]
    fn a_request_is_signed_for_its_own_plant_only_and_carries_its_moment_of_issue() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into()]).unwrap();
        let csr = request(dir.path(), "plant-a");
        let out = dir.path().join("plant-a.pem");
        let before = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        sign(dir.path(), &csr, "plant-a", 30, &out).unwrap();
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&fs::read(&out).unwrap()).unwrap();
        assert_eq!(plant_of(&der).unwrap(), "plant-a");
        let issued = issued_at_ms(&der).unwrap();
        assert!((before..before + 60_000).contains(&issued), "issued at {issued}, signing began at {before}");
        assert_eq!(
            sign(dir.path(), &csr, "plant-b", 30, &dir.path().join("b.pem")).unwrap_err().to_string(),
            format!(
                "{} asks for plant \"plant-a\", not \"plant-b\"; sign a request made for this plant",
                csr.display()
            )
        );
        let garbage = dir.path().join("garbage.csr");
        fs::write(&garbage, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n").unwrap();
        assert!(matches!(sign(dir.path(), &garbage, "plant-a", 30, &out), Err(CertError::Request { .. })));
    }

    #[test]
    fn init_refuses_to_overwrite_an_authority_and_issue_refuses_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into()]).unwrap();
        assert!(matches!(init(dir.path(), &["localhost".into()]), Err(CertError::Exists { .. })));
        assert_eq!(
            issue(dir.path(), "Plant A", PLANT_CERT_DAYS).unwrap_err().to_string(),
            "plant id \"Plant A\" must be 1 to 64 characters of a-z, 0-9 and '-'"
        );
    }
}
