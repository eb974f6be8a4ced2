//! [`SqliteLedger`]'s reads, retention and `verify`.

use super::*;
use crate::sql::common::{
    BoundaryRow, SCAN_BOUNDARIES, SCAN_CHECKPOINTS, SCAN_FIRINGS, SCAN_SNAPSHOTS,
};

impl SqliteLedger {
    pub(super) async fn read_firings(
        &self,
        q: &FiringQuery,
    ) -> Result<Vec<FiringRecord>, LedgerError> {
        let Ok(from) = i64::try_from(q.from_id.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT firing_id, record FROM firings \
             WHERE reactor = ?1 AND firing_id >= ?2 \
               AND (?3 IS NULL OR fired_at_us >= ?3) AND (?4 IS NULL OR fired_at_us < ?4) \
             ORDER BY firing_id LIMIT ?5",
        )
        .bind(&q.reactor)
        .bind(from)
        .bind(q.since_unix_us)
        .bind(q.until_unix_us)
        .bind(limit_to_sql(q.limit))
        .fetch_all(&self.readers)
        .await
        .map_err(self.err(&format!("cannot read firings of `{}`", q.reactor)))?;
        rows.iter()
            .map(|row| self.firing_from_row(&q.reactor, row))
            .collect()
    }

    pub(super) fn firing_from_row(
        &self,
        reactor: &str,
        row: &SqliteRow,
    ) -> Result<FiringRecord, LedgerError> {
        let id: i64 = row.try_get(0).map_err(self.err("cannot read a firing"))?;
        let bytes: &[u8] = row.try_get(1).map_err(self.err("cannot read a firing"))?;
        self.rows().firing(reactor, id, bytes)
    }

    pub(super) async fn read_last_firing(
        &self,
        reactor: &str,
    ) -> Result<Option<FiringRecord>, LedgerError> {
        let row = sqlx::query(
            "SELECT firing_id, record FROM firings WHERE reactor = ?1 \
             ORDER BY firing_id DESC LIMIT 1",
        )
        .bind(reactor)
        .fetch_optional(&self.readers)
        .await
        .map_err(self.err(&format!("cannot read the last firing of `{reactor}`")))?;
        row.map(|row| self.firing_from_row(reactor, &row))
            .transpose()
    }

    pub(super) async fn read_boundaries(
        &self,
        q: &BoundaryQuery,
    ) -> Result<Vec<BoundaryRecord>, LedgerError> {
        let Ok(from) = i64::try_from(q.from_seq.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let through = clamp_id(q.through_seq.unwrap_or(u64::MAX));
        let rows = sqlx::query(
            "SELECT seq, source, received_at_us, value, crc FROM boundaries \
             WHERE reactor = ?1 AND seq >= ?2 AND seq <= ?3 \
               AND (?4 IS NULL OR received_at_us >= ?4) AND (?5 IS NULL OR received_at_us < ?5) \
             ORDER BY seq LIMIT ?6",
        )
        .bind(&q.reactor)
        .bind(from)
        .bind(through)
        .bind(q.since_unix_us)
        .bind(q.until_unix_us)
        .bind(limit_to_sql(q.limit))
        .fetch_all(&self.readers)
        .await
        .map_err(self.err(&format!("cannot read boundaries of `{}`", q.reactor)))?;
        rows.iter()
            .map(|row| self.boundary_from_row(&q.reactor, row))
            .collect()
    }

    /// A row of `seq, source, received_at_us, value, crc`.
    pub(super) fn boundary_from_row(
        &self,
        reactor: &str,
        row: &SqliteRow,
    ) -> Result<BoundaryRecord, LedgerError> {
        let err = self.err("cannot read a boundary");
        self.rows().boundary(
            reactor,
            row.try_get(0).map_err(&err)?,
            row.try_get(1).map_err(&err)?,
            row.try_get(2).map_err(&err)?,
            row.try_get(3).map_err(&err)?,
            row.try_get(4).map_err(&err)?,
        )
    }

    pub(super) async fn read_snapshot(
        &self,
        reactor: &str,
    ) -> Result<Option<SnapshotRecord>, LedgerError> {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM snapshots WHERE reactor = ?")
                .bind(reactor)
                .fetch_optional(&self.readers)
                .await
                .map_err(self.err(&format!("cannot read the snapshot of `{reactor}`")))?;
        bytes.map(|b| self.rows().snapshot(reactor, &b)).transpose()
    }

    pub(super) async fn read_checkpoint(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<CheckpointRecord>, LedgerError> {
        let row: Option<(Vec<u8>, i64, i64)> =
            sqlx::query_as("SELECT value, at_us, crc FROM checkpoints WHERE owner = ? AND key = ?")
                .bind(owner)
                .bind(key)
                .fetch_optional(&self.readers)
                .await
                .map_err(self.err(&format!("cannot read checkpoint `{key}` of `{owner}`")))?;
        row.map(|(value, at, crc)| self.rows().checkpoint(owner, key, value, at, crc))
            .transpose()
    }

    pub(super) async fn read_checkpoints(
        &self,
        owner: &str,
    ) -> Result<Vec<CheckpointRecord>, LedgerError> {
        let rows: Vec<(String, Vec<u8>, i64, i64)> = sqlx::query_as(
            "SELECT key, value, at_us, crc FROM checkpoints WHERE owner = ? ORDER BY key",
        )
        .bind(owner)
        .fetch_all(&self.readers)
        .await
        .map_err(self.err(&format!("cannot list the checkpoints of `{owner}`")))?;
        rows.into_iter()
            .map(|(key, value, at, crc)| self.rows().checkpoint(owner, &key, value, at, crc))
            .collect()
    }

    pub(super) async fn retain_records(
        &self,
        reactor: &str,
        retention: Retention,
    ) -> Result<RetainReport, LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Buffered).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.err("cannot begin retention"))?;
        let report = match self.cut(&mut tx, reactor, retention).await {
            Ok(report) => {
                tx.commit()
                    .await
                    .map_err(self.err("cannot commit retention"))?;
                report
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        if report.boundaries_removed + report.firings_removed > 0 {
            // Hands the freed pages back to the file system (a no-op for a file created
            // before `auto_vacuum=INCREMENTAL`, which keeps them for reuse).
            sqlx::query("PRAGMA incremental_vacuum")
                .execute(&mut *conn)
                .await
                .map_err(self.err("cannot vacuum after retention"))?;
        }
        Ok(report)
    }

    pub(super) async fn cut(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        reactor: &str,
        retention: Retention,
    ) -> Result<RetainReport, LedgerError> {
        let (max_seq, max_id, snapshot): (Option<i64>, Option<i64>, Option<Vec<u8>>) =
            sqlx::query_as(
                "SELECT (SELECT max(seq) FROM boundaries WHERE reactor = ?1), \
                        (SELECT max(firing_id) FROM firings WHERE reactor = ?1), \
                        (SELECT record FROM snapshots WHERE reactor = ?1)",
            )
            .bind(reactor)
            .fetch_one(&mut **tx)
            .await
            .map_err(self.err("cannot read retention bounds"))?;
        let cut =
            self.rows()
                .retention_cut(reactor, retention, max_seq, max_id, snapshot.as_deref())?;
        // Exactly `RetentionCut::removes_boundary` and `removes_firing`.
        let boundaries = sqlx::query(
            "DELETE FROM boundaries WHERE reactor = ?1 AND seq <= ?2 \
             AND (seq <= ?3 OR received_at_us < ?4)",
        )
        .bind(reactor)
        .bind(clamp_id(cut.boundary_protect))
        .bind(clamp_id(cut.boundary_count_cut))
        .bind(cut.older_than_unix_us)
        .execute(&mut **tx)
        .await
        .map_err(self.err("cannot remove boundaries"))?;
        let firings = sqlx::query(
            "DELETE FROM firings WHERE reactor = ?1 AND firing_id <= ?2 \
             AND (firing_id <= ?3 OR fired_at_us < ?4)",
        )
        .bind(reactor)
        .bind(clamp_id(cut.firing_protect))
        .bind(clamp_id(cut.firing_count_cut))
        .bind(cut.older_than_unix_us)
        .execute(&mut **tx)
        .await
        .map_err(self.err("cannot remove firings"))?;
        Ok(RetainReport {
            boundaries_removed: boundaries.rows_affected(),
            firings_removed: firings.rows_affected(),
        })
    }

    /// `PRAGMA quick_check`, then every record read back and its checksum verified.
    pub(super) async fn verify_store(&self) -> Result<VerifyReport, LedgerError> {
        let mut scan = Scan::new();
        let check: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&self.readers)
            .await
            .map_err(self.err("cannot run quick_check"))?;
        for line in check.into_iter().filter(|l| l != "ok") {
            scan.report.problems.push(format!(
                "{BACKEND} ledger at {}: quick_check: {line}",
                self.location
            ));
        }
        let mut rows = sqlx::query_as::<_, BoundaryRow>(SCAN_BOUNDARIES).fetch(&self.readers);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(self.err("cannot scan boundaries"))?
        {
            scan.boundary(&self.rows(), row);
        }
        drop(rows);
        let mut rows =
            sqlx::query_as::<_, (String, i64, Vec<u8>)>(SCAN_FIRINGS).fetch(&self.readers);
        while let Some((reactor, id, bytes)) = rows
            .try_next()
            .await
            .map_err(self.err("cannot scan firings"))?
        {
            scan.firing(&self.rows(), &reactor, id, &bytes);
        }
        drop(rows);
        let snapshots = sqlx::query_as(SCAN_SNAPSHOTS)
            .fetch_all(&self.readers)
            .await
            .map_err(self.err("cannot scan snapshots"))?;
        scan.snapshots(&self.rows(), snapshots);
        let checkpoints = sqlx::query_as(SCAN_CHECKPOINTS)
            .fetch_all(&self.readers)
            .await
            .map_err(self.err("cannot scan checkpoints"))?;
        scan.checkpoints(&self.rows(), checkpoints);
        Ok(scan.finish())
    }
}
