//! How a plant is named on the wire: its id's shape, the ALPN of the session, and the URI
//! `urn:holdfast:plant:<id>` in a client certificate's subject alternative names, the only place
//! a plant's identity is ever taken from (never from a payload).

/// The ALPN protocol of the agent-hub session.
pub const ALPN: &[u8] = b"holdfast/1";
/// The scheme of a plant identity in a certificate's subject alternative names.
pub const PLANT_URI_PREFIX: &str = "urn:holdfast:plant:";
/// Longest plant id.
pub const PLANT_ID_BYTES_MAX: usize = 64;

/// Whether a plant id is acceptable: it appears in URIs, MQTT topics and file names, so it is
/// 1 to 64 characters of `a-z`, `0-9` and `-`, not starting with `-`.
pub fn valid_plant_id(id: &str) -> bool {
    (1..=PLANT_ID_BYTES_MAX).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// The plant a DER certificate names: exactly one `urn:holdfast:plant:` URI with a valid id.
pub fn plant_of(cert_der: &[u8]) -> Result<String, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .ok_or("the certificate has no subject alternative names")?;
    let plants: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(PLANT_URI_PREFIX),
            _ => None,
        })
        .collect();
    match plants.as_slice() {
        [one] if valid_plant_id(one) => Ok((*one).to_owned()),
        [one] => Err(format!("the certificate names an invalid plant id {one:?}")),
        [] => Err(format!("the certificate names no plant (no {PLANT_URI_PREFIX}<id> URI)")),
        many => Err(format!("the certificate names {} plants; it must name exactly one", many.len())),
    }
}

/// What to log about the sync socket's UDP receive buffer: `Ok` when the kernel gave what was
/// asked, `Err` (a warning, with the fix) when it capped it. Linux reports twice the usable size.
pub fn udp_buffer_note(effective: Option<usize>, asked: usize) -> Result<String, String> {
    match effective {
        Some(got) if got >= asked => Ok(format!("UDP receive buffer {got} bytes (asked for {asked})")),
        Some(got) => Err(format!(
            "UDP receive buffer {got} bytes, less than the {asked} asked for: the kernel caps it at \
             net.core.rmem_max; raise it (sysctl -w net.core.rmem_max={asked}) or expect more \
             retransmissions under load"
        )),
        None => Err(format!("could not read the UDP receive buffer's size (asked for {asked} bytes)")),
    }
}

/// First byte of a plant certificate's serial number as Holdfast issues it: the tag, the moment
/// of issue (Unix milliseconds, 8 bytes big-endian), 8 random bytes.
pub const SERIAL_TAG: u8 = 0x48;

/// When a DER certificate was issued: from its serial number when Holdfast issued it, else its
/// `notBefore` (certificates from other tools).
pub fn issued_at_ms(cert_der: &[u8]) -> Result<i64, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("unreadable certificate: {e}"))?;
    match cert.raw_serial() {
        [SERIAL_TAG, rest @ ..] if rest.len() == 16 => Ok(i64::from_be_bytes(rest[..8].try_into().expect("8 bytes"))),
        _ => Ok(cert.validity().not_before.timestamp() * 1000),
    }
}

/// When a DER certificate stops being valid, in Unix seconds.
pub fn not_after(cert_der: &[u8]) -> Result<i64, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plant_ids_are_narrow() {
        for ok in ["plant-a", "p1", "a".repeat(64).as_str()] {
            assert!(valid_plant_id(ok), "{ok}");
        }
        for bad in ["", "Plant", "plant a", "-a", "plant/a", "a".repeat(65).as_str()] {
            assert!(!valid_plant_id(bad), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(plant_of(b"nope").unwrap_err().starts_with("unreadable certificate"));
    }
}
