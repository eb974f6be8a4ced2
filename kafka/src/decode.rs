//! From a Kafka record to a typed boundary.

use std::sync::Arc;

use serde::de::DeserializeOwned;

/// A record as the decoder sees it (borrowed from the consumer; nothing copied).
#[derive(Debug, Clone, Copy)]
pub struct KafkaRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Payload (`None`: a tombstone).
    pub payload: Option<&'a [u8]>,
    /// Timestamp, milliseconds since the epoch, if the record has one.
    pub timestamp_ms: Option<i64>,
}

/// What a decoder makes of one record: `Ok(Some(value))` a boundary, `Ok(None)` skip it (a
/// filter; its offset is committed like a fired one's), `Err(reason)` a dead letter (counted,
/// logged, sent to the dead-letter topic if one is configured, its offset committed: it
/// never stops the stream).
pub type DecodeResult<T> = Result<Option<T>, String>;

/// A decoding function, shared.
type DecodeFn<T> = Arc<dyn Fn(&KafkaRecord<'_>) -> DecodeResult<T> + Send + Sync>;

/// A record decoder: serde JSON, the engine codec, or a function of your own.
pub struct Decoder<T>(pub(crate) DecodeFn<T>);

impl<T> Clone for Decoder<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for Decoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl<T: 'static> Decoder<T> {
    /// Decodes the payload as JSON; a tombstone (no payload) is skipped.
    pub fn json() -> Self
    where
        T: DeserializeOwned,
    {
        Self(Arc::new(|r: &KafkaRecord<'_>| match r.payload {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| format!("not JSON for {}: {e}", std::any::type_name::<T>())),
        }))
    }

    /// Decodes the payload with the engine codec (bincode behind a format-version byte, as
    /// the ledger stores values); a tombstone is skipped.
    pub fn codec() -> Self
    where
        T: DeserializeOwned,
    {
        Self(Arc::new(|r: &KafkaRecord<'_>| match r.payload {
            None => Ok(None),
            Some(bytes) => cloacina_graph_core::codec::decode(bytes)
                .map(Some)
                .map_err(|e| e.to_string()),
        }))
    }

    /// Your own function; return `Ok(None)` to filter a record out.
    pub fn from_fn(
        f: impl Fn(&KafkaRecord<'_>) -> DecodeResult<T> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn decode(&self, record: &KafkaRecord<'_>) -> DecodeResult<T> {
        (self.0)(record)
    }
}
