//! [`SqliteLedger`]'s workflow store: tables `wf_executions` and `wf_tasks`
//! (`migrations/sqlite/0002_workflows.sql`). Writes and claims take the ledger's write lock
//! and run in one `BEGIN IMMEDIATE` transaction on the writer connection.

use super::*;
use crate::sql::workflows::{
    assemble, outcome_code, stage, ExecRow, TaskRow, EXEC_COLUMNS, TASK_COLUMNS,
};
use crate::{StoredExecution, WorkflowRecord};

/// Rows per statement. A batch's rows of one kind go in statements of these sizes (largest
/// first), so a batch of n rows takes about log2(n) statements instead of n (each is a
/// round trip to sqlx's SQLite thread), and each kind has only these few statement texts
/// for sqlx to keep prepared.
const ROWS_PER_STATEMENT: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// `rows` cut into slices of the sizes in [`ROWS_PER_STATEMENT`], largest first.
fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = ROWS_PER_STATEMENT
            .iter()
            .copied()
            .find(|&n| n <= rows.len())?;
        let (chunk, rest) = rows.split_at(n);
        rows = rest;
        Some(chunk)
    })
}

/// What each statement writes.
#[derive(Clone, Copy)]
enum Rows {
    Starts,
    Tasks,
    Ends,
}

/// The statement writing `n` rows (`n` one of [`ROWS_PER_STATEMENT`]), built once.
fn rows_sql(kind: Rows, n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<[String; 3]>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        ROWS_PER_STATEMENT
            .iter()
            .map(|&n| {
                let values = |row: &str| vec![row; n].join(", ");
                [
                    format!(
                        "INSERT INTO wf_executions \
                         (id, workflow, version, input, created_at_us, owner, lease_until_us, status) \
                         VALUES {} ON CONFLICT (id) DO NOTHING",
                        values("(?, ?, ?, ?, ?, ?, ?, 0)")
                    ),
                    format!(
                        "INSERT INTO wf_tasks \
                         (execution_id, task, outcome, attempts, output, error, started_at_us, finished_at_us) \
                         SELECT * FROM (VALUES {}) AS v \
                         WHERE EXISTS (SELECT 1 FROM wf_executions e WHERE e.id = v.column1) \
                         ON CONFLICT (execution_id, task) DO NOTHING",
                        values("(?, ?, ?, ?, ?, ?, ?, ?)")
                    ),
                    format!(
                        "UPDATE wf_executions SET status = u.column2, final_context = u.column3, \
                         error = u.column4, finished_at_us = u.column5 \
                         FROM (VALUES {}) AS u \
                         WHERE wf_executions.id = u.column1 AND wf_executions.status = 0",
                        values("(?, ?, ?, ?, ?)")
                    ),
                ]
            })
            .collect()
    });
    let i = ROWS_PER_STATEMENT
        .iter()
        .position(|&m| m == n)
        .unwrap_or(ROWS_PER_STATEMENT.len() - 1);
    all.get(i).map_or("", |texts| texts[kind as usize].as_str())
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Writes `rows` of one kind in statements of [`ROWS_PER_STATEMENT`] rows, `bind` adding one
/// row's values to a statement.
async fn write_rows<'q, T>(
    conn: &mut sqlx::SqliteConnection,
    kind: Rows,
    rows: &'q [&'q T],
    bind: impl Fn(SqliteQuery<'q>, &'q T) -> SqliteQuery<'q>,
) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(rows) {
        let q = chunk
            .iter()
            .fold(sqlx::query(rows_sql(kind, chunk.len())), |q, row| {
                bind(q, row)
            });
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `names` as a JSON array of strings (for `json_each`).
fn json_array(names: &[String]) -> String {
    let mut out = String::from("[");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in name.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// An id as stored (checked below 2^63 by staging).
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl SqliteLedger {
    /// One: writes take the ledger's write lock in turn.
    pub(super) fn workflow_write_slots(&self) -> usize {
        1
    }

    pub(super) async fn write_workflow_records(
        &self,
        records: &[WorkflowRecord],
        commit: Commit,
        fence: Option<&str>,
    ) -> Result<Vec<u64>, LedgerError> {
        let mut staged = stage(BACKEND, records)?;
        let mut dropped = Vec::new();
        if records.is_empty() {
            return Ok(dropped);
        }
        let (_guard, mut conn) = self.writer(commit).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.err("cannot begin a workflow write"))?;
        if let Some(owner) = fence {
            // Under the write lock: owners cannot change before this write commits.
            let ids: std::collections::BTreeSet<i64> = staged
                .tasks
                .iter()
                .map(|t| sql_id(t.execution_id))
                .chain(staged.ends.iter().map(|e| sql_id(e.execution_id)))
                .collect();
            if !ids.is_empty() {
                let list: Vec<String> = ids.iter().map(i64::to_string).collect();
                // Ids are integers: safe to inline. Executions started by this batch
                // are not there yet, and are the writer's own.
                let others: Vec<i64> = sqlx::query_scalar(&format!(
                    "SELECT id FROM wf_executions WHERE id IN ({}) AND owner <> ?",
                    list.join(",")
                ))
                .bind(owner)
                .fetch_all(&mut *tx)
                .await
                .map_err(self.err("cannot read the owners of executions"))?;
                if !others.is_empty() {
                    let others: std::collections::HashSet<u64> = others
                        .into_iter()
                        .filter_map(|id| u64::try_from(id).ok())
                        .collect();
                    staged.tasks.retain(|t| !others.contains(&t.execution_id));
                    staged.ends.retain(|e| !others.contains(&e.execution_id));
                    dropped = others.into_iter().collect();
                }
            }
        }
        write_rows(&mut tx, Rows::Starts, &staged.starts, |q, s| {
            q.bind(sql_id(s.id))
                .bind(&s.workflow)
                .bind(&s.version)
                .bind(&s.input)
                .bind(s.created_at_unix_us)
                .bind(&s.owner)
                .bind(s.lease_until_unix_us)
        })
        .await
        .map_err(self.err("cannot record execution starts"))?;
        write_rows(&mut tx, Rows::Tasks, &staged.tasks, |q, t| {
            q.bind(sql_id(t.execution_id))
                .bind(&t.task)
                .bind(outcome_code(t.outcome))
                .bind(i64::from(t.attempts))
                .bind(&t.output)
                .bind(&t.error)
                .bind(t.started_at_unix_us)
                .bind(t.finished_at_unix_us)
        })
        .await
        .map_err(self.err("cannot record task outcomes"))?;
        write_rows(&mut tx, Rows::Ends, &staged.ends, |q, e| {
            q.bind(sql_id(e.execution_id))
                .bind(e.status.code())
                .bind(&e.final_context)
                .bind(&e.error)
                .bind(e.finished_at_unix_us)
        })
        .await
        .map_err(self.err("cannot record execution ends"))?;
        tx.commit()
            .await
            .map_err(self.err("cannot commit a workflow write"))?;
        if crate::workflows::signal::submits_work(records) {
            self.work.bump();
        }
        Ok(dropped)
    }

    pub(super) fn work_receiver(&self) -> tokio::sync::watch::Receiver<u64> {
        self.work.subscribe()
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

    /// Claims executions (see [`WorkflowStore::claim_unfinished`], and, with `workflows`,
    /// [`WorkflowStore::claim_expired`]: expired leases of those workflows only).
    pub(super) async fn claim_executions(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: usize,
        workflows: Option<&[String]>,
    ) -> Result<Vec<StoredExecution>, LedgerError> {
        if workflows.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        // The workflows as a JSON array (`json_each`), or NULL for any.
        let names = workflows.map(json_array);
        let (_guard, mut conn) = self.writer(Commit::Durable).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.err("cannot begin a claim"))?;
        let mut rows: Vec<ExecRow> = sqlx::query_as(&format!(
            "UPDATE wf_executions SET owner = ?1, lease_until_us = ?3, \
                 takeovers = takeovers + (owner <> '' AND owner <> ?1) WHERE id IN ( \
                 SELECT id FROM wf_executions \
                 WHERE status = 0 AND (lease_until_us < ?2 OR (?5 IS NULL AND owner = ?1)) \
                 AND (?5 IS NULL OR workflow IN (SELECT value FROM json_each(?5))) \
                 ORDER BY id LIMIT ?4) \
             RETURNING {EXEC_COLUMNS}"
        ))
        .bind(owner)
        .bind(now)
        .bind(until)
        .bind(limit_to_sql(Some(limit)))
        .bind(names)
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
    ) -> Result<Vec<u64>, LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Buffered).await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE wf_executions SET lease_until_us = ? WHERE status = 0 AND owner = ? \
             RETURNING id",
        )
        .bind(until)
        .bind(owner)
        .fetch_all(&mut *conn)
        .await
        .map_err(self.err("cannot renew leases"))?;
        Ok(ids
            .into_iter()
            .filter_map(|id| u64::try_from(id).ok())
            .collect())
    }

    pub(super) async fn count_unfinished(&self) -> Result<u64, LedgerError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM wf_executions WHERE status = 0")
            .fetch_one(&self.readers)
            .await
            .map_err(self.err("cannot count unfinished executions"))?;
        Ok(u64::try_from(n).unwrap_or(0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_in_few_statements_of_known_sizes() {
        for n in [0usize, 1, 2, 3, 7, 64, 100, 129, 300, 4096] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            let rejoined: Vec<usize> = chunks.concat();
            assert_eq!(rejoined, rows, "every row once, in order (n = {n})");
            assert!(chunks.iter().all(|c| ROWS_PER_STATEMENT.contains(&c.len())));
            assert!(
                chunks.len() <= n / 128 + 7,
                "{} statements for {n} rows",
                chunks.len()
            );
        }
        for (kind, n) in [(Rows::Starts, 4), (Rows::Tasks, 128), (Rows::Ends, 1)] {
            let sql = rows_sql(kind, n);
            assert_eq!(sql.matches('?').count() % n, 0, "{sql}");
        }
    }
}
