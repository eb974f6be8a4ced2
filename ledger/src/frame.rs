//! Record checksums. Whole records (and sled's chunks of them) are stored *sealed*: the codec
//! bytes followed by the crc32 (little-endian) of those bytes. Records stored in columns
//! (SQL boundaries and checkpoints) keep a crc32 of their fields in a column beside them.
//! Reads verify either; a mismatch is damage, never a silently different record.

use cloacina_codec::{decode, encode, CodecError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::LedgerError;
#[cfg(test)]
use crate::Record;
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
use crate::{BoundaryRecord, CheckpointRecord};

/// Bytes of the checksum that ends a sealed value.
pub(crate) const CRC_LEN: usize = 4;

/// A sealed value could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// Shorter than a checksum.
    #[error("{len} bytes: too short to hold a checksum")]
    Short { len: usize },
    /// The bytes do not match their checksum.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    /// The checksum matched but the codec could not decode the bytes.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Appends the crc32 of `bytes` to them.
pub(crate) fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The value of sealed bytes, if they match their checksum.
pub(crate) fn unseal(bytes: &[u8]) -> Result<&[u8], FrameError> {
    let Some(split) = bytes.len().checked_sub(CRC_LEN) else {
        return Err(FrameError::Short { len: bytes.len() });
    };
    let (body, tail) = bytes.split_at(split);
    let mut stored = [0u8; CRC_LEN];
    stored.copy_from_slice(tail);
    let stored = u32::from_le_bytes(stored);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(body)
}

/// Encodes `value` with the codec and seals it.
pub(crate) fn encode_sealed<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode(value).map(seal)
}

/// Checks and decodes sealed bytes.
pub(crate) fn decode_sealed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    Ok(decode(unseal(bytes)?)?)
}

/// A [`FrameError`] as a ledger error naming what was read (`what`) and where.
pub(crate) fn frame_error<'a>(
    backend: &'static str,
    location: &'a str,
    what: impl FnOnce() -> String + 'a,
) -> impl FnOnce(FrameError) -> LedgerError + 'a {
    move |e| match e {
        FrameError::Codec(source) => LedgerError::Codec {
            backend,
            context: format!("{} at {location}", what()),
            source,
        },
        other => LedgerError::Corrupt {
            backend,
            location: location.to_owned(),
            reason: format!("{}: {other}", what()),
        },
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", test))]
fn field_crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize()
}

/// The checksum of a boundary stored in columns.
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
pub(crate) fn boundary_crc(b: &BoundaryRecord) -> u32 {
    field_crc(&[
        b.reactor.as_bytes(),
        &b.seq.to_le_bytes(),
        b.source.as_bytes(),
        &b.received_at_unix_us.to_le_bytes(),
        &b.value,
    ])
}

/// The checksum of a checkpoint stored in columns.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn checkpoint_crc(c: &CheckpointRecord) -> u32 {
    field_crc(&[
        c.owner.as_bytes(),
        c.key.as_bytes(),
        &c.value,
        &c.at_unix_us.to_le_bytes(),
    ])
}

/// A record in the sealed encoding the backends store whole records in.
#[cfg(test)]
pub(crate) fn encode_record(record: &Record) -> Result<Vec<u8>, CodecError> {
    encode_sealed(record)
}

/// Reads back [`encode_record`]'s bytes.
#[cfg(test)]
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, FrameError> {
    decode_sealed(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{FiringOutcome, FiringRecord, FiringTrigger, SnapshotRecord};

    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("(?s).{0,12}").expect("regex")
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..64)
    }

    fn boundary() -> impl Strategy<Value = BoundaryRecord> {
        (text(), any::<u64>(), text(), any::<i64>(), bytes()).prop_map(
            |(reactor, seq, source, received_at_unix_us, value)| BoundaryRecord {
                reactor,
                seq,
                source,
                received_at_unix_us,
                value,
            },
        )
    }

    fn firing() -> impl Strategy<Value = FiringRecord> {
        let trigger = prop_oneof![
            Just(FiringTrigger::Criteria),
            Just(FiringTrigger::Forced),
            Just(FiringTrigger::Supplied)
        ];
        let outcome = prop_oneof![
            proptest::collection::vec((text(), bytes()), 0..3)
                .prop_map(|outputs| FiringOutcome::Completed { outputs }),
            (text(), text()).prop_map(|(node, error)| FiringOutcome::Failed { node, error }),
        ];
        (
            text(),
            any::<u64>(),
            trigger,
            proptest::collection::vec((text(), any::<u64>()), 0..4),
            any::<i64>(),
            any::<u64>(),
            outcome,
        )
            .prop_map(
                |(reactor, firing_id, trigger, inputs, fired_at_unix_us, duration_ns, outcome)| {
                    FiringRecord {
                        reactor,
                        firing_id,
                        trigger,
                        inputs,
                        fired_at_unix_us,
                        duration_ns,
                        outcome,
                    }
                },
            )
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            boundary().prop_map(Record::Boundary),
            firing().prop_map(Record::Firing),
            (text(), text(), bytes(), any::<i64>()).prop_map(|(owner, key, value, at_unix_us)| {
                Record::Checkpoint(CheckpointRecord {
                    owner,
                    key,
                    value,
                    at_unix_us,
                })
            }),
            (
                text(),
                any::<u64>(),
                any::<u64>(),
                any::<i64>(),
                proptest::collection::vec(boundary(), 0..3),
                proptest::collection::vec(text(), 0..3),
                proptest::collection::vec(boundary(), 0..3),
            )
                .prop_map(
                    |(reactor, last_seq, next_firing_id, taken_at_unix_us, cache, dirty, queue)| {
                        Record::Snapshot(SnapshotRecord {
                            reactor,
                            last_seq,
                            next_firing_id,
                            taken_at_unix_us,
                            cache,
                            dirty,
                            queue,
                        })
                    },
                ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        // Whatever a record holds, it reads back as itself; so do sled's chunks of them.
        #[test]
        fn every_record_round_trips(r in record(), chunk in proptest::collection::vec(boundary(), 0..4)) {
            let bytes = encode_record(&r).expect("encode");
            prop_assert_eq!(decode_record(&bytes).expect("decode"), r);
            let bytes = encode_sealed(&chunk).expect("encode chunk");
            prop_assert_eq!(decode_sealed::<Vec<BoundaryRecord>>(&bytes).expect("decode chunk"), chunk);
        }

        // Any bytes give a record or an error, never a panic: as stored (checksum first) and
        // with a valid checksum over garbage (so the codec itself sees it).
        #[test]
        fn any_bytes_decode_or_fail_cleanly(junk in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&junk);
            let _ = decode_record(&seal(junk.clone()));
            let mut versioned = vec![cloacina_codec::FORMAT_VERSION];
            versioned.extend_from_slice(&junk);
            let _ = decode_record(&seal(versioned));
        }

        // Any single damaged byte is caught by the checksum (crc32 detects every burst of
        // up to 32 bits), whole records and column checksums alike.
        #[test]
        fn a_flipped_byte_is_detected(r in record(), at in any::<proptest::sample::Index>(), flip in 1u8..=255) {
            let mut bytes = encode_record(&r).expect("encode");
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(
                matches!(decode_record(&bytes), Err(FrameError::Checksum { .. })),
                "byte {} of {} changed undetected", i, bytes.len()
            );
        }

        #[test]
        fn a_changed_boundary_field_changes_its_checksum(b in boundary(), at in any::<proptest::sample::Index>(), flip in 1u8..=255) {
            let mut changed = b.clone();
            if changed.value.is_empty() {
                changed.seq ^= u64::from(flip);
            } else {
                let i = at.index(changed.value.len());
                changed.value[i] ^= flip;
            }
            prop_assert_ne!(boundary_crc(&b), boundary_crc(&changed));
        }
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(matches!(
            unseal(&[1, 2, 3]),
            Err(FrameError::Short { len: 3 })
        ));
        assert!(matches!(
            decode_record(&[]),
            Err(FrameError::Short { len: 0 })
        ));
    }
}
