//! [`SqliteLedger`]'s workflow store: tables `wf_executions` and `wf_tasks`
//! (`migrations/sqlite/0002_workflows.sql`). Writes and claims take the ledger's write lock
//! and run in one `BEGIN IMMEDIATE` transaction on the writer connection.

use super::*;
use crate::sql::workflows::{
    assemble, outcome_code, stage, ExecRow, TaskRow, EXEC_COLUMNS, TASK_COLUMNS,
};
use crate::{StoredExecution, WorkflowRecord};

const INSERT_START: &str = "INSERT INTO wf_executions \
     (id, workflow, version, input, created_at_us, owner, lease_until_us, status) \
     VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING";
const INSERT_TASK: &str = "INSERT INTO wf_tasks \
     (execution_id, task, outcome, attempts, output, error, started_at_us, finished_at_us) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM wf_executions WHERE id = ?1) \
     ON CONFLICT (execution_id, task) DO NOTHING";
const UPDATE_END: &str = "UPDATE wf_executions \
     SET status = ?, final_context = ?, error = ?, finished_at_us = ? WHERE id = ? AND status = 0";

/// An id as stored (checked below 2^63 by staging).
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl SqliteLedger {
    pub(super) async fn write_workflow_records(
        &self,
        records: &[WorkflowRecord],
        commit: Commit,
    ) -> Result<(), LedgerError> {
        let staged = stage(BACKEND, records)?;
        if records.is_empty() {
            return Ok(());
        }
        let (_guard, mut conn) = self.writer(commit).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.err("cannot begin a workflow write"))?;
        for s in &staged.starts {
            sqlx::query(INSERT_START)
                .bind(sql_id(s.id))
                .bind(&s.workflow)
                .bind(&s.version)
                .bind(&s.input)
                .bind(s.created_at_unix_us)
                .bind(&s.owner)
                .bind(s.lease_until_unix_us)
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot record an execution start"))?;
        }
        for t in &staged.tasks {
            sqlx::query(INSERT_TASK)
                .bind(sql_id(t.execution_id))
                .bind(&t.task)
                .bind(outcome_code(t.outcome))
                .bind(i64::from(t.attempts))
                .bind(&t.output)
                .bind(&t.error)
                .bind(t.started_at_unix_us)
                .bind(t.finished_at_unix_us)
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot record a task outcome"))?;
        }
        for e in &staged.ends {
            sqlx::query(UPDATE_END)
                .bind(e.status.code())
                .bind(&e.final_context)
                .bind(&e.error)
                .bind(e.finished_at_unix_us)
                .bind(sql_id(e.execution_id))
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot record an execution end"))?;
        }
        tx.commit()
            .await
            .map_err(self.err("cannot commit a workflow write"))
    }

    pub(super) async fn read_execution(
        &self,
        id: u64,
    ) -> Result<Option<StoredExecution>, LedgerError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let row: Option<ExecRow> = sqlx::query_as(&format!(
            "SELECT {EXEC_COLUMNS} FROM wf_executions WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.readers)
        .await
        .map_err(self.err(&format!("cannot read execution {id}")))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tasks: Vec<TaskRow> = sqlx::query_as(&format!(
            "SELECT {TASK_COLUMNS} FROM wf_tasks WHERE execution_id = ? ORDER BY task"
        ))
        .bind(id)
        .fetch_all(&self.readers)
        .await
        .map_err(self.err(&format!("cannot read the tasks of execution {id}")))?;
        Ok(assemble(BACKEND, &self.location, vec![row], tasks)?.pop())
    }

    pub(super) async fn claim_executions(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<StoredExecution>, LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Durable).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.err("cannot begin a claim"))?;
        let mut rows: Vec<ExecRow> = sqlx::query_as(&format!(
            "UPDATE wf_executions SET owner = ?1, lease_until_us = ?3 WHERE id IN ( \
                 SELECT id FROM wf_executions \
                 WHERE status = 0 AND (owner = ?1 OR lease_until_us < ?2) ORDER BY id LIMIT ?4) \
             RETURNING {EXEC_COLUMNS}"
        ))
        .bind(owner)
        .bind(now)
        .bind(until)
        .bind(limit_to_sql(Some(limit)))
        .fetch_all(&mut *tx)
        .await
        .map_err(self.err("cannot claim executions"))?;
        rows.sort_by_key(|r| r.0);
        let tasks: Vec<TaskRow> = if rows.is_empty() {
            Vec::new()
        } else {
            // Ids are integers: safe to inline.
            let ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
            sqlx::query_as(&format!(
                "SELECT {TASK_COLUMNS} FROM wf_tasks WHERE execution_id IN ({}) \
                 ORDER BY execution_id, task",
                ids.join(",")
            ))
            .fetch_all(&mut *tx)
            .await
            .map_err(self.err("cannot read the tasks of claimed executions"))?
        };
        tx.commit()
            .await
            .map_err(self.err("cannot commit a claim"))?;
        assemble(BACKEND, &self.location, rows, tasks)
    }

    pub(super) async fn renew_executions(
        &self,
        owner: &str,
        until: i64,
    ) -> Result<u64, LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Buffered).await?;
        let done = sqlx::query(
            "UPDATE wf_executions SET lease_until_us = ? WHERE status = 0 AND owner = ?",
        )
        .bind(until)
        .bind(owner)
        .execute(&mut *conn)
        .await
        .map_err(self.err("cannot renew leases"))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn reserve_ids(&self, count: u64) -> Result<u64, LedgerError> {
        let count = i64::try_from(count.max(1)).unwrap_or(i64::MAX);
        let (_guard, mut conn) = self.writer(Commit::Durable).await?;
        let last: i64 = sqlx::query_scalar(
            "UPDATE ledger_meta SET value = value + ? WHERE key = 'last_execution_id' RETURNING value",
        )
        .bind(count)
        .fetch_one(&mut *conn)
        .await
        .map_err(self.err("cannot reserve execution ids"))?;
        Ok(u64::try_from(last - count + 1).unwrap_or(1))
    }
}
