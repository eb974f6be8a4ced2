//! [`PostgresLedger`]'s reads, retention and `verify`.

use super::*;
use crate::sql::common::{
    BoundaryRow, SCAN_BOUNDARIES, SCAN_CHECKPOINTS, SCAN_FIRINGS, SCAN_SNAPSHOTS,
};

/// The id floor and inclusive time ceiling of a range read; `None` when the query can match
/// nothing (an id past `i64`, `until` at its minimum, a NUL in the name, a limit of 0).
fn window(
    reactor: &str,
    from: Option<u64>,
    until_unix_us: Option<i64>,
    limit: Option<usize>,
) -> Option<(i64, i64)> {
    let from = i64::try_from(from.unwrap_or(0)).ok()?;
    let until = match until_unix_us {
        Some(i64::MIN) => return None,
        Some(t) => t - 1,
        None => i64::MAX,
    };
    (!reactor.contains('\0') && limit != Some(0)).then_some((from, until))
}

impl PostgresLedger {
    pub(super) async fn read_firings(
        &self,
        q: &FiringQuery,
    ) -> Result<Vec<FiringRecord>, LedgerError> {
        let Some((from, until)) = window(&q.reactor, q.from_id, q.until_unix_us, q.limit) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(SELECT_FIRINGS)
            .bind(&q.reactor)
            .bind(from)
            .bind(q.since_unix_us.unwrap_or(i64::MIN))
            .bind(until)
            .bind(q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot read firings"))?;
        rows.iter()
            .map(|(id, bytes)| self.rows().firing(&q.reactor, *id, bytes))
            .collect()
    }

    pub(super) async fn read_last_firing(
        &self,
        reactor: &str,
    ) -> Result<Option<FiringRecord>, LedgerError> {
        if reactor.contains('\0') {
            return Ok(None);
        }
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT firing_id, record FROM firings WHERE reactor = $1 \
             ORDER BY firing_id DESC LIMIT 1",
        )
        .bind(reactor)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err("cannot read the last firing"))?;
        row.map(|(id, bytes)| self.rows().firing(reactor, id, &bytes))
            .transpose()
    }

    pub(super) async fn read_boundaries(
        &self,
        q: &BoundaryQuery,
    ) -> Result<Vec<BoundaryRecord>, LedgerError> {
        let Some((from, until)) = window(&q.reactor, q.from_seq, q.until_unix_us, q.limit) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, String, i64, Vec<u8>, i64)> = sqlx::query_as(SELECT_BOUNDARIES)
            .bind(&q.reactor)
            .bind(from)
            .bind(q.through_seq.map_or(i64::MAX, clamp_id))
            .bind(q.since_unix_us.unwrap_or(i64::MIN))
            .bind(until)
            .bind(q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot read boundaries"))?;
        rows.into_iter()
            .map(|(seq, source, at, value, crc)| {
                self.rows()
                    .boundary(&q.reactor, seq, source, at, value, crc)
            })
            .collect()
    }

    pub(super) async fn read_snapshot(
        &self,
        reactor: &str,
    ) -> Result<Option<SnapshotRecord>, LedgerError> {
        if reactor.contains('\0') {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM snapshots WHERE reactor = $1")
                .bind(reactor)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.err("cannot read the snapshot"))?;
        bytes.map(|b| self.rows().snapshot(reactor, &b)).transpose()
    }

    pub(super) async fn read_checkpoint(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<CheckpointRecord>, LedgerError> {
        if owner.contains('\0') || key.contains('\0') {
            return Ok(None);
        }
        let row: Option<(Vec<u8>, i64, i64)> = sqlx::query_as(
            "SELECT value, at_us, crc FROM checkpoints WHERE owner = $1 AND key = $2",
        )
        .bind(owner)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err("cannot read the checkpoint"))?;
        row.map(|(value, at, crc)| self.rows().checkpoint(owner, key, value, at, crc))
            .transpose()
    }

    pub(super) async fn read_checkpoints(
        &self,
        owner: &str,
    ) -> Result<Vec<CheckpointRecord>, LedgerError> {
        if owner.contains('\0') {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>, i64, i64)> = sqlx::query_as(
            "SELECT key, value, at_us, crc FROM checkpoints WHERE owner = $1 ORDER BY key",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("cannot list the checkpoints"))?;
        rows.into_iter()
            .map(|(key, value, at, crc)| self.rows().checkpoint(owner, &key, value, at, crc))
            .collect()
    }

    pub(super) async fn retain_records(
        &self,
        reactor: &str,
        retention: Retention,
    ) -> Result<RetainReport, LedgerError> {
        if reactor.contains('\0') {
            return Ok(RetainReport::default());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("cannot begin a transaction"))?;
        let (max_seq, max_id, snapshot): RetentionRow = sqlx::query_as(RETENTION_BOUNDS)
            .bind(reactor)
            .fetch_one(&mut *tx)
            .await
            .map_err(self.err("cannot read retention bounds"))?;
        let cut =
            self.rows()
                .retention_cut(reactor, retention, max_seq, max_id, snapshot.as_deref())?;
        let mut report = RetainReport::default();
        if cut.boundary_protect > 0 {
            report.boundaries_removed = sqlx::query(DELETE_BOUNDARIES)
                .bind(reactor)
                .bind(clamp_id(cut.boundary_protect))
                .bind(clamp_id(cut.boundary_count_cut))
                .bind(cut.older_than_unix_us)
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot remove boundaries"))?
                .rows_affected();
        }
        if cut.firing_protect > 0 {
            report.firings_removed = sqlx::query(DELETE_FIRINGS)
                .bind(reactor)
                .bind(clamp_id(cut.firing_protect))
                .bind(clamp_id(cut.firing_count_cut))
                .bind(cut.older_than_unix_us)
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot remove firings"))?
                .rows_affected();
        }
        tx.commit()
            .await
            .map_err(self.err("cannot commit retention"))?;
        Ok(report)
    }

    /// The expected tables and columns, then every record read back and its checksum
    /// verified.
    pub(super) async fn verify_store(&self) -> Result<VerifyReport, LedgerError> {
        let mut scan = Scan::new();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(self.err("cannot get a connection"))?;
        let missing = Self::missing_tables(&mut conn, &self.schema)
            .await
            .map_err(self.err("cannot list the ledger's tables"))?;
        drop(conn);
        if !missing.is_empty() {
            scan.report.problems.push(format!(
                "{BACKEND} ledger at {}: schema `{}` lacks {}",
                self.location,
                self.schema,
                missing.join(", ")
            ));
            return Ok(scan.finish());
        }
        let mut rows = sqlx::query_as::<_, BoundaryRow>(SCAN_BOUNDARIES).fetch(&self.pool);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(self.err("cannot scan boundaries"))?
        {
            scan.boundary(&self.rows(), row);
        }
        drop(rows);
        let mut rows = sqlx::query_as::<_, (String, i64, Vec<u8>)>(SCAN_FIRINGS).fetch(&self.pool);
        while let Some((reactor, id, bytes)) = rows
            .try_next()
            .await
            .map_err(self.err("cannot scan firings"))?
        {
            scan.firing(&self.rows(), &reactor, id, &bytes);
        }
        drop(rows);
        let snapshots = sqlx::query_as(SCAN_SNAPSHOTS)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot scan snapshots"))?;
        scan.snapshots(&self.rows(), snapshots);
        let checkpoints = sqlx::query_as(SCAN_CHECKPOINTS)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot scan checkpoints"))?;
        scan.checkpoints(&self.rows(), checkpoints);
        Ok(scan.finish())
    }
}
