//! The MessagePack encoding of queue payloads.
//!
//! Payloads are encoded with named fields (`rmp_serde::to_vec_named`), so reordering or adding
//! fields of a payload struct does not break entries already queued; removed or renamed fields
//! follow the expand/contract rule of `docs/job-lifecycle.md`.

use serde::{Serialize, de::DeserializeOwned};

/// A payload that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode payload: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

/// A payload that could not be decoded: a poison message.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode payload: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

/// Encodes a payload with named fields.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a payload encoded by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize)]
    struct V1 {
        a: u32,
        b: String,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct V2 {
        b: String,
        a: u32,
        #[serde(default)]
        c: Option<u8>,
    }

    #[test]
    fn reordered_and_added_fields_still_decode() {
        let bytes = encode(&V1 {
            a: 7,
            b: "x".into(),
        })
        .unwrap();
        let v2: V2 = decode(&bytes).unwrap();
        assert_eq!(
            v2,
            V2 {
                b: "x".into(),
                a: 7,
                c: None
            }
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode::<V2>(b"\xc1not msgpack").is_err());
    }
}
