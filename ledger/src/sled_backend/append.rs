//! [`SledLedger`]'s write path: staging records into chunks, checking ids already stored,
//! and applying one append as one sled batch.

use super::*;

impl SledLedger {
    /// Adds one reactor's records of one kind to `batch`, checking ids already stored.
    /// `pending` holds chunks this batch already rewrote (so two records landing in the same
    /// old chunk both make it).
    pub(super) fn stage<T: Chunked>(
        &self,
        high: &mut HighWater,
        reactor: &str,
        mut records: Vec<&T>,
        batch: &mut sled::Batch,
        pending: &mut HashMap<Vec<u8>, Vec<T>>,
        new_high: &mut Vec<(u8, String, u64)>,
    ) -> Result<(), LedgerError> {
        if reactor.as_bytes().contains(&0) {
            return Err(nul_name(reactor));
        }
        records.sort_by_key(|r| r.id());
        // Same id twice in one batch: fine if equal, a conflict if not.
        let mut deduped: Vec<&T> = Vec::with_capacity(records.len());
        for r in records {
            match deduped.last() {
                Some(prev) if prev.id() == r.id() => {
                    if *prev != r {
                        return Err(LedgerError::Conflict {
                            backend: BACKEND,
                            record: r.record().describe(),
                        });
                    }
                }
                _ => deduped.push(r),
            }
        }
        let hwm = self.high_id::<T>(high, reactor)?;
        let split = deduped.partition_point(|r| r.id() <= hwm);
        let (old, new) = deduped.split_at(split);
        // Ids at or below the high-water mark: already stored (same content: skip), or a
        // gap to fill (rare: out-of-order appends).
        for r in old {
            let found = match self.chunk_at::<T>(reactor, r.id())? {
                Some((key, stored)) => {
                    let chunk = pending.entry(key.to_vec()).or_insert(stored);
                    match chunk.binary_search_by_key(&r.id(), T::id) {
                        Ok(i) if chunk[i] == **r => true,
                        Ok(_) => {
                            return Err(LedgerError::Conflict {
                                backend: BACKEND,
                                record: r.record().describe(),
                            })
                        }
                        Err(i) if i < chunk.len() => {
                            // Inside this chunk's range: merge into it.
                            chunk.insert(i, (*r).clone());
                            true
                        }
                        Err(_) => false,
                    }
                }
                None => false,
            };
            if !found {
                // Between chunks: a chunk of its own.
                pending.insert(chunk_key(T::KIND, reactor, r.id()), vec![(*r).clone()]);
            }
        }
        if let (Some(first), Some(last)) = (new.first(), new.last()) {
            let bytes = self.encode_value(|| first.record().describe(), new)?;
            if bytes.len() <= CHUNK_BYTES || new.len() == 1 {
                batch.insert(chunk_key(T::KIND, reactor, first.id()), bytes);
            } else {
                // sled writes values over a quarter segment to files of their own; keep
                // chunks under that (equal record counts per chunk).
                let parts = bytes.len().div_ceil(CHUNK_BYTES);
                for part in new.chunks(new.len().div_ceil(parts)) {
                    if let Some(head) = part.first() {
                        let bytes = self.encode_value(|| head.record().describe(), part)?;
                        batch.insert(chunk_key(T::KIND, reactor, head.id()), bytes);
                    }
                }
            }
            new_high.push((T::KIND, reactor.to_owned(), last.id()));
        }
        Ok(())
    }

    pub(crate) async fn flush_db(&self) -> Result<(), LedgerError> {
        // On tokio's blocking pool: sled's own `flush_async` thread pool stalled under
        // concurrent appends in our tests.
        let db = self.db.clone();
        let appends = self.appends.load(std::sync::atomic::Ordering::Acquire);
        let path = self.path.clone();
        let flushed = move || {
            db.flush()?;
            // Every append up to `appends` is now on disk: note it beside the store, so a
            // later open can tell a log that lost flushed appends.
            open::write_durable(&path, appends);
            Ok::<_, sled::Error>(())
        };
        match tokio::task::spawn_blocking(flushed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sled_error(&self.path, "flush failed", e)),
            Err(e) => Err(LedgerError::store(
                BACKEND,
                format!("flush task at {}", self.path.display()),
                false,
                e,
            )),
        }
    }

    pub(super) fn append_now(&self, records: &[Record]) -> Result<(), LedgerError> {
        // Grouped by reactor; a batch usually holds one or a few, so a short list beats a
        // hash per record.
        let mut boundaries: Vec<(&str, Vec<&BoundaryRecord>)> = Vec::new();
        let mut firings: Vec<(&str, Vec<&FiringRecord>)> = Vec::new();
        let mut snapshots: HashMap<&str, &SnapshotRecord> = HashMap::new();
        let mut batch = sled::Batch::default();
        for record in records {
            match record {
                Record::Boundary(b) => group(&mut boundaries, &b.reactor).push(b),
                Record::Firing(f) => group(&mut firings, &f.reactor).push(f),
                // Later ones in the batch overwrite earlier ones: the batch applies in order.
                Record::Checkpoint(c) => {
                    let mut key = prefix(CHECKPOINT, &c.owner);
                    key.extend_from_slice(c.key.as_bytes());
                    batch.insert(key, self.encode_value(|| record.describe(), c)?);
                }
                Record::Snapshot(s) => {
                    snapshots.insert(&s.reactor, s);
                }
            }
        }
        let mut high = self.lock()?;
        for (reactor, snapshot) in snapshots {
            self.stage_snapshot(reactor, snapshot, &mut batch)?;
        }
        let mut new_high = Vec::new();
        let mut pending_b: HashMap<Vec<u8>, Vec<BoundaryRecord>> = HashMap::new();
        let mut pending_f: HashMap<Vec<u8>, Vec<FiringRecord>> = HashMap::new();
        for (reactor, list) in boundaries {
            self.stage(
                &mut high,
                reactor,
                list,
                &mut batch,
                &mut pending_b,
                &mut new_high,
            )?;
        }
        for (reactor, list) in firings {
            self.stage(
                &mut high,
                reactor,
                list,
                &mut batch,
                &mut pending_f,
                &mut new_high,
            )?;
        }
        for (key, chunk) in pending_b {
            let bytes = self.encode_value(|| "boundary chunk".into(), &chunk)?;
            batch.insert(key, bytes);
        }
        for (key, chunk) in pending_f {
            let bytes = self.encode_value(|| "firing chunk".into(), &chunk)?;
            batch.insert(key, bytes);
        }
        let appends = self.appends.load(std::sync::atomic::Ordering::Acquire) + 1;
        batch.insert(APPENDS_KEY, &appends.to_be_bytes());
        self.records
            .apply_batch(batch)
            .map_err(|e| sled_error(&self.path, "append failed", e))?;
        self.appends
            .store(appends, std::sync::atomic::Ordering::Release);
        for (kind, reactor, h) in new_high {
            high.of(kind).insert(reactor, h);
        }
        Ok(())
    }
}
