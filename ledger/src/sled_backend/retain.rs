//! [`SledLedger`]'s snapshots (stored in pieces) and retention.

use super::*;

/// How many chunks one retention write removes or rewrites (see `retain_kind`).
const RETAIN_CHUNKS_PER_BATCH: usize = 64;

impl SledLedger {
    /// Replaces `reactor`'s snapshot with `snapshot`, stored in pieces of at most
    /// [`CHUNK_BYTES`] (a Sequential queue can make a snapshot megabytes long; as one value it
    /// would be a sled blob, and sled leaks replaced blobs).
    pub(super) fn stage_snapshot(
        &self,
        reactor: &str,
        snapshot: &SnapshotRecord,
        batch: &mut sled::Batch,
    ) -> Result<(), LedgerError> {
        if reactor.as_bytes().contains(&0) {
            return Err(nul_name(reactor));
        }
        let start = prefix(SNAPSHOT, reactor);
        for entry in self.records.scan_prefix(&start) {
            let (key, _) = entry.map_err(|e| self.read_error(e))?;
            batch.remove(key);
        }
        let bytes = self.encode_value(|| format!("snapshot of reactor `{reactor}`"), snapshot)?;
        for (i, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let mut key = start.clone();
            key.extend_from_slice(&(i as u32).to_be_bytes());
            batch.insert(key, piece);
        }
        Ok(())
    }

    /// Reassembles `reactor`'s snapshot from its pieces.
    pub(super) fn read_snapshot(
        &self,
        reactor: &str,
    ) -> Result<Option<SnapshotRecord>, LedgerError> {
        let mut bytes = Vec::new();
        for entry in self.records.scan_prefix(prefix(SNAPSHOT, reactor)) {
            let (_, piece) = entry.map_err(|e| self.read_error(e))?;
            bytes.extend_from_slice(&piece);
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        let location = self.path.display().to_string();
        decode_sealed(&bytes)
            .map(Some)
            .map_err(frame_error(BACKEND, &location, || {
                format!("snapshot of reactor `{reactor}`")
            }))
    }

    pub(super) fn retain_now(
        &self,
        reactor: &str,
        retention: Retention,
        snapshot: Option<SnapshotRecord>,
    ) -> Result<RetainReport, LedgerError> {
        {
            let mut high = self.lock()?;
            let max_seq = self.high_id::<BoundaryRecord>(&mut high, reactor)?;
            let max_id = self.high_id::<FiringRecord>(&mut high, reactor)?;
            let cut = retention.cut(
                max_seq,
                max_id,
                snapshot.map(|s| (s.last_seq, s.next_firing_id)),
            );
            let report = RetainReport {
                boundaries_removed: self.retain_kind::<BoundaryRecord>(
                    reactor,
                    |b| cut.removes_boundary(b.seq, b.received_at_unix_us),
                    cut.older_than_unix_us == i64::MIN,
                )?,
                firings_removed: self.retain_kind::<FiringRecord>(
                    reactor,
                    |f| cut.removes_firing(f.firing_id, f.fired_at_unix_us),
                    cut.older_than_unix_us == i64::MIN,
                )?,
            };
            Ok(report)
        }
    }

    /// Applies `cut` to one kind's chunks of `reactor`; returns how many records went.
    ///
    /// Removals are applied [`RETAIN_CHUNKS_PER_BATCH`] chunks at a time: one sled batch
    /// holding a whole retention pass (hundreds of thousands of records on a busy reactor)
    /// is buffered in full inside sled before it is written, a memory spike as large as
    /// the pass. Each chunk's rewrite is atomic on its own, and a record is either still
    /// there or gone, so a crash between batches leaves a valid, partly retained store.
    pub(super) fn retain_kind<T: Chunked>(
        &self,
        reactor: &str,
        removes: impl Fn(&T) -> bool,
        id_prefix_only: bool,
    ) -> Result<u64, LedgerError> {
        let mut removed = 0u64;
        let mut batch = sled::Batch::default();
        let mut staged = 0usize;
        for entry in self.records.scan_prefix(prefix(T::KIND, reactor)) {
            let (key, value) = entry.map_err(|e| self.read_error(e))?;
            let chunk: Vec<T> = self.decode_chunk(&key, &value)?;
            let before = chunk.len();
            let kept: Vec<T> = chunk.into_iter().filter(|r| !removes(r)).collect();
            if kept.len() == before {
                // Chunks come in id order and a count cut removes a prefix of ids: a chunk
                // with nothing to remove ends the scan, so retention costs what it removes,
                // not the whole store. An age cut may meet out-of-order times: scan on.
                if id_prefix_only {
                    break;
                }
                continue;
            }
            removed += (before - kept.len()) as u64;
            batch.remove(key);
            if let Some(first) = kept.first() {
                let bytes = self.encode_value(|| "chunk".into(), &kept)?;
                batch.insert(chunk_key(T::KIND, reactor, first.id()), bytes);
            }
            staged += 1;
            if staged == RETAIN_CHUNKS_PER_BATCH {
                self.apply_retention(std::mem::take(&mut batch))?;
                staged = 0;
            }
        }
        if staged > 0 {
            self.apply_retention(batch)?;
        }
        Ok(removed)
    }

    fn apply_retention(&self, batch: sled::Batch) -> Result<(), LedgerError> {
        self.records
            .apply_batch(batch)
            .map_err(|e| sled_error(&self.path, "retention failed", e))
    }
}
