//! How runners sharing a PostgreSQL database hear of new work: a write that submits work
//! unclaimed is followed by `NOTIFY cloacina_work` with the schema's name, and each ledger
//! `LISTEN`s (one connection, started at the first
//! [`work_signal`](crate::WorkflowStore::work_signal)) and bumps its work signal on notices
//! for its schema.

use super::*;
use crate::workflows::WorkSignal;

impl PostgresLedger {
    /// Tells every process listening on this database that work was submitted to this
    /// schema (`NOTIFY`), and this process's runners directly. A lost notice costs only
    /// latency: runners sweep on a timer too.
    pub(super) async fn announce_work(&self) {
        self.work.bump();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(&self.schema)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "postgres workflow store: cannot notify runners of new work");
        }
    }

    /// The work signal, with a task (started at the first call) that `LISTEN`s for work
    /// submitted to this schema by any process.
    pub(super) fn work_receiver(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.work.subscribe();
        if !self
            .listening
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(listen_for_work(
                        self.pool.clone(),
                        self.schema.clone(),
                        Arc::downgrade(&self.work),
                    ));
                }
                Err(_) => self
                    .listening
                    .store(false, std::sync::atomic::Ordering::Release),
            }
        }
        receiver
    }
    pub(super) async fn count_unfinished(&self) -> Result<u64, LedgerError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM wf_executions WHERE status = 0")
            .fetch_one(&self.pool)
            .await
            .map_err(self.err("cannot count unfinished executions"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The channel work notices go on (the payload names the schema).
const WORK_CHANNEL: &str = "cloacina_work";

/// Bumps `work` on each notice for `schema`, until the ledger is dropped. A lost connection
/// is reopened by sqlx; notices sent meanwhile are lost, so `work` is bumped then too.
async fn listen_for_work(pool: PgPool, schema: String, work: std::sync::Weak<WorkSignal>) {
    let mut listener = loop {
        let listening = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(WORK_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listening.await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "postgres workflow store: cannot LISTEN for work; trying again");
                if work.upgrade().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(1), listener.try_recv()).await;
        let Some(signal) = work.upgrade() else {
            return;
        };
        match notice {
            Err(_) => {} // Nothing for a second: see whether the ledger is still there.
            Ok(Ok(Some(n))) => {
                if n.payload() == schema {
                    signal.bump();
                }
            }
            // The connection was lost (sqlx reconnects at the next call): notices may
            // have been missed.
            Ok(Ok(None)) => signal.bump(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "postgres workflow store: LISTEN failed; reconnecting");
                signal.bump();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
