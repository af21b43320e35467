//! The one place Holdfast turns values into CBOR bytes and back.
//!
//! The design card names `serde_cbor`, which is unmaintained (RUSTSEC-2021-0127); Holdfast uses
//! `minicbor-serde` behind this module so the rest of the code keeps serde derives and never names
//! the CBOR crate. Golden-byte tests pin the encoding this module produces.

use serde::{Serialize, de::DeserializeOwned};

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("CBOR encoding failed: {0}")]
    Encode(String),
    #[error("CBOR decoding failed: {0}")]
    Decode(String),
}

/// Encodes a value as CBOR. Struct fields become map entries named as in the Rust type, in
/// declaration order, so the same value always gives the same bytes.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Most Holdfast values are a few hundred bytes: one allocation instead of a growing series.
    let mut out = Vec::with_capacity(512);
    value.serialize(&mut minicbor_serde::Serializer::new(&mut out)).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a CBOR value. Unknown map entries are ignored by the wire types (see the crate docs).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    minicbor_serde::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}
