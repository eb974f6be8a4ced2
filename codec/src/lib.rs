//! # cloacina-codec
//!
//! The one codec of the engine: bincode (standard configuration) behind a leading
//! format-version byte. Values are encoded only when a ledger or a process boundary needs them;
//! in process they travel typed. It sits below every other crate: graph-core encodes boundary
//! values and terminal outputs with it, the ledger its records.
//!
//! Decoding never trusts a length prefix: bincode may claim at most [`DECODE_LIMIT`] bytes of
//! memory for one value, so corrupt or hostile bytes (`"a string of 2^60 bytes"`) are a
//! [`CodecError::Decode`], never a huge allocation or a panic. [`encode`] refuses values whose
//! encoding exceeds [`MAX_ENCODED_LEN`], which keeps every accepted value decodable: a decode
//! claims at most 16 bytes of memory per encoded byte (a one-byte varint read as `u128`).
//!
//! ```
//! use cloacina_codec::{decode, encode, CodecError};
//!
//! let bytes = encode(&("quote", 100.5_f64))?;
//! assert_eq!(decode::<(String, f64)>(&bytes)?, ("quote".to_owned(), 100.5));
//! // A string claiming u64::MAX bytes: rejected, nothing allocated.
//! let hostile = [cloacina_codec::FORMAT_VERSION, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
//! assert!(matches!(decode::<String>(&hostile), Err(CodecError::Decode { .. })));
//! # Ok::<(), CodecError>(())
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format version written as the first byte of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// Largest encoding [`encode`] produces (64 MiB after the version byte); larger values are an
/// [`CodecError::Encode`].
pub const MAX_ENCODED_LEN: usize = 64 << 20;

/// Most memory bincode may claim while decoding one value (1 GiB): 16 times
/// [`MAX_ENCODED_LEN`], the most any accepted encoding can need.
pub const DECODE_LIMIT: usize = 16 * MAX_ENCODED_LEN;

/// The decoding configuration: the encoding one plus the memory limit (the wire format is
/// the same).
fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode {type_name}: {message}")]
    Encode {
        /// Rust type being encoded.
        type_name: &'static str,
        /// Encoder message.
        message: String,
    },
    /// The bytes could not be decoded as the requested type.
    #[error("cannot decode {type_name}: {message}")]
    Decode {
        /// Rust type requested.
        type_name: &'static str,
        /// Decoder message.
        message: String,
    },
    /// The bytes were written by another format version.
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    Version {
        /// Version byte found.
        found: u8,
    },
    /// No bytes at all.
    #[error("empty input: no format-version byte")]
    Empty,
}

/// Encodes a value: the version byte followed by bincode.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).map_err(
        |e| CodecError::Encode {
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        },
    )?;
    let body = out.len().saturating_sub(1);
    if body > MAX_ENCODED_LEN {
        return Err(CodecError::Encode {
            type_name: std::any::type_name::<T>(),
            message: format!(
                "encoding is {body} bytes, over the codec's limit of {MAX_ENCODED_LEN} bytes"
            ),
        });
    }
    Ok(out)
}

/// Decodes bytes written by [`encode`]. Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, decode_config()).map_err(|e| CodecError::Decode {
            type_name: std::any::type_name::<T>(),
            message: match e {
                bincode::error::DecodeError::LimitExceeded => format!(
                    "the bytes declare more than the {DECODE_LIMIT}-byte decode limit (corrupt length prefix?)"
                ),
                other => other.to_string(),
            },
        })?;
    if used != body.len() {
        return Err(CodecError::Decode {
            type_name: std::any::type_name::<T>(),
            message: format!("{} trailing bytes", body.len() - used),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Quote {
        bid: f64,
        ask: f64,
        venue: String,
    }

    #[test]
    fn round_trip() {
        let q = Quote {
            bid: 100.0,
            ask: 100.1,
            venue: "x".into(),
        };
        let bytes = encode(&q).expect("encode");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Quote>(&bytes).expect("decode"), q);
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut bytes = encode(&7u32).expect("encode");
        bytes[0] = 99;
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::Version { found: 99 })
        ));
        assert!(matches!(decode::<u32>(&[]), Err(CodecError::Empty)));
        let bytes = encode(&"hello").expect("encode");
        let err = decode::<Quote>(&bytes).expect_err("wrong type");
        assert!(err.to_string().contains("Quote"), "{err}");
        let mut bytes = encode(&1u8).expect("encode");
        bytes.push(0);
        assert!(decode::<u8>(&bytes).is_err());
    }
}
