//! Enrolment: the gateway makes its own key and a certificate signing request for its plant.
//! The key stays here (mode 0600); only the request goes to the hub's operators, who sign it
//! with `holdfast-hub certs sign`. Renewal is the same two steps before the certificate expires.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use holdfast_protocol::identity::{PLANT_URI_PREFIX, valid_plant_id};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("plant id {0:?} must be 1 to 64 characters of a-z, 0-9 and '-'")]
    PlantId(String),
    #[error(
        "{path} already exists; move it away first (a renewal makes a new key: keep the old one until the new certificate works)"
    )]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("making the key or the request failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Writes `<plant>.key` (new, 0600) and `<plant>.csr` into `dir`; returns their paths.
pub fn request(dir: &Path, plant: &str) -> Result<(PathBuf, PathBuf), EnrolError> {
    if !valid_plant_id(plant) {
        return Err(EnrolError::PlantId(plant.to_owned()));
    }
    let (key_path, csr_path) = (dir.join(format!("{plant}.key")), dir.join(format!("{plant}.csr")));
    for path in [&key_path, &csr_path] {
        if path.exists() {
            return Err(EnrolError::Exists { path: path.clone() });
        }
    }
    fs::create_dir_all(dir).map_err(|source| EnrolError::Io { path: dir.to_owned(), source })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, format!("holdfast plant {plant}"));
    params.subject_alt_names = vec![SanType::URI(format!("{PLANT_URI_PREFIX}{plant}").try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let csr = params.serialize_request(&key)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| EnrolError::Io { path, source }
    };
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path).map_err(io(&key_path))?;
    f.write_all(key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    f.sync_all().map_err(io(&key_path))?;
    fs::write(&csr_path, csr.pem()?).map_err(io(&csr_path))?;
    Ok((key_path, csr_path))
}
