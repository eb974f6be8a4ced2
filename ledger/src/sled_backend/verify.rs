//! [`SledLedger`]'s `verify`: sled's own structural check, then every value read back.

use std::panic::AssertUnwindSafe;

use crate::frame::{decode_sealed, frame_error};
use crate::{
    BoundaryRecord, CheckpointRecord, FiringRecord, LedgerError, SnapshotRecord, VerifyReport,
};

use super::{
    describe_key, sled_error, Chunked, SledLedger, BOUNDARY, CHECKPOINT, FIRING, SNAPSHOT,
};

/// The scan's state: the current group of chunks (kind and reactor) and its ids.
#[derive(Default)]
struct Groups {
    current: Option<(u8, Vec<u8>)>,
    ids: Vec<u64>,
    snapshot: Option<(Vec<u8>, Vec<u8>)>,
}

impl SledLedger {
    pub(super) fn verify_now(&self) -> Result<VerifyReport, LedgerError> {
        let mut report = VerifyReport::default();
        let meta = self
            .db
            .open_tree("meta")
            .map_err(|e| sled_error(&self.path, "cannot open tree `meta`", e))?;
        for (name, tree) in [("meta", &meta), ("records", &self.records)] {
            // sled's check walks the tree's nodes and asserts their links: contained.
            match std::panic::catch_unwind(AssertUnwindSafe(|| tree.verify_integrity())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => report.problems.push(
                    sled_error(&self.path, &format!("tree `{name}` failed sled's check"), e)
                        .to_string(),
                ),
                Err(payload) => report.problems.push(format!(
                    "sled ledger at {}: tree `{name}` failed sled's check: {}",
                    self.path.display(),
                    crate::writer::panic_text(&*payload)
                )),
            }
        }
        let mut groups = Groups::default();
        for entry in self.records.iter() {
            let (key, value) = match entry {
                Ok(kv) => kv,
                Err(e) => {
                    report.problems.push(self.read_error(e).to_string());
                    break;
                }
            };
            match key.first().copied() {
                Some(BOUNDARY) => {
                    self.check_chunk::<BoundaryRecord>(&key, &value, &mut groups, &mut report)
                }
                Some(FIRING) => {
                    self.check_chunk::<FiringRecord>(&key, &value, &mut groups, &mut report)
                }
                Some(CHECKPOINT) => {
                    report.records_checked += 1;
                    if let Err(e) = self.decode_value::<CheckpointRecord>(&key, &value) {
                        report.problems.push(e.to_string());
                    }
                }
                Some(SNAPSHOT) => {
                    // Pieces: `S reactor 0x00 piece(u32)`; reassembled per reactor.
                    let name = key
                        .get(..key.len().saturating_sub(4))
                        .unwrap_or(&[])
                        .to_vec();
                    match &mut groups.snapshot {
                        Some((n, bytes)) if *n == name => bytes.extend_from_slice(&value),
                        _ => {
                            self.end_snapshot(&mut groups, &mut report);
                            groups.snapshot = Some((name, value.to_vec()));
                        }
                    }
                }
                Some(b'M') if key.as_ref() == super::APPENDS_KEY => {}
                _ => report.problems.push(format!(
                    "sled ledger at {}: unknown key {:?}",
                    self.path.display(),
                    key.as_ref()
                )),
            }
        }
        self.end_group(&mut groups, &mut report);
        self.end_snapshot(&mut groups, &mut report);
        Ok(report)
    }

    fn decode_value<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, LedgerError> {
        let location = self.path.display().to_string();
        decode_sealed(bytes).map_err(frame_error(super::BACKEND, &location, || describe_key(key)))
    }

    fn check_chunk<T: Chunked>(
        &self,
        key: &[u8],
        value: &[u8],
        groups: &mut Groups,
        report: &mut VerifyReport,
    ) {
        let Some(split) = key.len().checked_sub(9) else {
            report.problems.push(format!(
                "sled ledger at {}: malformed key {key:?}",
                self.path.display()
            ));
            return;
        };
        let group = (T::KIND, key[1..split].to_vec());
        if groups.current.as_ref() != Some(&group) {
            self.end_group(groups, report);
            groups.current = Some(group);
        }
        match self.decode_chunk::<T>(key, value) {
            Ok(chunk) => {
                report.records_checked += chunk.len() as u64;
                let mut first = [0u8; 8];
                first.copy_from_slice(&key[split + 1..]);
                let ordered = chunk.windows(2).all(|w| w[0].id() < w[1].id());
                if chunk.first().map(T::id) != Some(u64::from_be_bytes(first)) || !ordered {
                    report.problems.push(format!(
                        "sled ledger at {}: {} does not hold the ids its key says",
                        self.path.display(),
                        describe_key(key)
                    ));
                }
                groups.ids.extend(chunk.iter().map(T::id));
            }
            Err(e) => {
                report.records_checked += 1;
                report.problems.push(e.to_string());
            }
        }
    }

    fn end_group(&self, groups: &mut Groups, report: &mut VerifyReport) {
        if let Some((kind, reactor)) = groups.current.take() {
            let kind = if kind == BOUNDARY {
                "boundary"
            } else {
                "firing"
            };
            report.note_gaps(&String::from_utf8_lossy(&reactor), kind, &groups.ids);
        }
        groups.ids.clear();
    }

    fn end_snapshot(&self, groups: &mut Groups, report: &mut VerifyReport) {
        if let Some((name, bytes)) = groups.snapshot.take() {
            report.records_checked += 1;
            if let Err(e) = self.decode_value::<SnapshotRecord>(&name, &bytes) {
                report.problems.push(e.to_string());
            }
        }
    }
}
