//! Dead letters to a topic: an undecodable record, copied with why it failed.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::decode::KafkaRecord;

/// How long one dead letter may take to be acknowledged before it counts as unsent.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// A producer of dead letters (one per consumer thread).
pub(crate) struct DeadLetters {
    producer: BaseProducer,
    topic: String,
}

impl DeadLetters {
    pub(crate) fn new(brokers: &str, topic: &str) -> Result<Self, String> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| format!("bad dead-letter producer configuration: {e}"))?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Produces `record`'s key and payload to the dead-letter topic, with headers naming its
    /// origin and `reason`, and waits for the acknowledgement (dead letters are rare; its
    /// offset is committed only after this returns).
    pub(crate) fn send(&self, record: &KafkaRecord<'_>, reason: &str) -> Result<(), String> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "cloacina-error",
                value: Some(reason),
            })
            .insert(Header {
                key: "cloacina-topic",
                value: Some(record.topic),
            })
            .insert(Header {
                key: "cloacina-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "cloacina-offset",
                value: Some(&offset),
            });
        let mut out = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(record.payload.unwrap_or_default())
            .headers(headers);
        if let Some(key) = record.key {
            out = out.key(key);
        }
        self.producer
            .send(out)
            .map_err(|(e, _)| format!("dead letter not produced: {e}"))?;
        self.producer
            .flush(ACK_WAIT)
            .map_err(|e| format!("dead letter not acknowledged: {e}"))
    }
}
