//! [`SqliteLedger`]'s write path: the writer connection, appends (insert, compare what
//! was already stored) and flush.

use super::*;

impl SqliteLedger {
    /// Takes the write lock and the writer connection, set to `commit`'s durability.
    pub(super) async fn writer(
        &self,
        commit: Commit,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, PoolConnection<Sqlite>), LedgerError> {
        let guard = self.write_lock.lock().await;
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(self.err("cannot get the writer connection"))?;
        // Per transaction, and outside it (SQLite refuses to change it inside one).
        let pragma = match commit {
            Commit::Buffered => "PRAGMA synchronous = NORMAL",
            Commit::Durable => "PRAGMA synchronous = FULL",
        };
        sqlx::query(pragma)
            .execute(&mut *conn)
            .await
            .map_err(self.err("cannot set `synchronous`"))?;
        Ok((guard, conn))
    }

    pub(super) async fn append_records(
        &self,
        records: &[Record],
        commit: Commit,
    ) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Ok(());
        }
        let staged = stage(BACKEND, records, false)?;
        let (_guard, mut conn) = self.writer(commit).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.err("cannot begin an append"))?;
        match self.apply(&mut tx, &staged).await {
            Ok(()) => tx
                .commit()
                .await
                .map_err(self.err("cannot commit an append")),
            Err(e) => {
                // Dropping the transaction would roll back too, on the connection's next use.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    pub(super) async fn apply(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        staged: &Staged<'_>,
    ) -> Result<(), LedgerError> {
        for (start, log) in chunks(staged.boundaries.len()) {
            let rows = &staged.boundaries[start..start + (1 << log)];
            let mut q = sqlx::query(&self.insert_boundaries[log]);
            for b in rows {
                q = q
                    .bind(&b.record.reactor)
                    .bind(b.seq)
                    .bind(&b.record.source)
                    .bind(b.record.received_at_unix_us)
                    .bind(&b.record.value)
                    .bind(b.crc);
            }
            let done = q
                .execute(&mut **tx)
                .await
                .map_err(self.err("cannot insert boundaries"))?;
            if done.rows_affected() < rows.len() as u64 {
                self.compare_boundaries(tx, rows).await?;
            }
        }
        for (start, log) in chunks(staged.firings.len()) {
            let rows = &staged.firings[start..start + (1 << log)];
            let mut q = sqlx::query(&self.insert_firings[log]);
            for f in rows {
                q = q
                    .bind(&f.record.reactor)
                    .bind(f.id)
                    .bind(f.record.fired_at_unix_us)
                    .bind(&f.bytes);
            }
            let done = q
                .execute(&mut **tx)
                .await
                .map_err(self.err("cannot insert firings"))?;
            if done.rows_affected() < rows.len() as u64 {
                self.compare_firings(tx, rows).await?;
            }
        }
        for c in &staged.checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (owner, key, value, at_us, crc) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value, \
                 at_us = excluded.at_us, crc = excluded.crc",
            )
            .bind(&c.record.owner)
            .bind(&c.record.key)
            .bind(&c.record.value)
            .bind(c.record.at_unix_us)
            .bind(c.crc)
            .execute(&mut **tx)
            .await
            .map_err(self.err("cannot store a checkpoint"))?;
        }
        for (reactor, bytes) in &staged.snapshots {
            sqlx::query(
                "INSERT INTO snapshots (reactor, record) VALUES (?, ?) \
                 ON CONFLICT (reactor) DO UPDATE SET record = excluded.record",
            )
            .bind(*reactor)
            .bind(bytes)
            .execute(&mut **tx)
            .await
            .map_err(self.err("cannot store a snapshot"))?;
        }
        Ok(())
    }

    /// Some rows of an insert were already stored: each must equal what is stored now.
    pub(super) async fn compare_boundaries(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        rows: &[SqlBoundary<'_>],
    ) -> Result<(), LedgerError> {
        for b in rows {
            let row = sqlx::query(
                "SELECT seq, source, received_at_us, value, crc FROM boundaries \
                 WHERE reactor = ? AND seq = ?",
            )
            .bind(&b.record.reactor)
            .bind(b.seq)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.err("cannot read a stored boundary"))?;
            let same = match &row {
                Some(row) => self.boundary_from_row(&b.record.reactor, row)? == *b.record,
                None => false,
            };
            if !same {
                return Err(LedgerError::Conflict {
                    backend: BACKEND,
                    record: Record::Boundary(b.record.clone()).describe(),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn compare_firings(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        rows: &[SqlFiring<'_>],
    ) -> Result<(), LedgerError> {
        for f in rows {
            let stored: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT record FROM firings WHERE reactor = ? AND firing_id = ?",
            )
            .bind(&f.record.reactor)
            .bind(f.id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.err("cannot read a stored firing"))?;
            let same = match stored {
                Some(bytes) => common::same_firing(&self.rows(), &bytes, f.record, &f.bytes, f.id)?,
                None => false,
            };
            if !same {
                return Err(LedgerError::Conflict {
                    backend: BACKEND,
                    record: Record::Firing(f.record.clone()).describe(),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn flush_all(&self) -> Result<(), LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Durable).await?;
        sqlx::query(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(FLUSH_KEY)
        .bind(crate::now_unix_us())
        .execute(&mut *conn)
        .await
        .map_err(self.err("cannot flush"))?;
        Ok(())
    }
}
