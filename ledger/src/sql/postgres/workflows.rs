//! [`PostgresLedger`]'s workflow store: tables `wf_executions` and `wf_tasks`
//! (`migrations/postgres/0002_workflows.sql`). A write takes its rows as arrays (`UNNEST`):
//! one statement (one round trip, atomic on its own) whatever its size and whatever it
//! holds. Claims take rows with
//! `FOR UPDATE SKIP LOCKED`: runners sharing the database never wait on each other's claims
//! and never take the same execution.

use super::*;
use crate::sql::workflows::{
    assemble, outcome_code, stage, ExecRow, TaskRow, EXEC_COLUMNS, TASK_COLUMNS,
};
use crate::workflows::signal::submits_work;
use crate::{ExecutionEndRecord, ExecutionRecord, StoredExecution, TaskRecord, WorkflowRecord};

/// The whole batch as one statement. Data-modifying CTEs see the tables as they were before
/// the statement, so what refers to an execution the batch starts cannot look it up: an end
/// of such an execution is written with its start (the inserted row is already ended), and
/// its tasks are written without a lookup (a part of their own); tasks and ends of other
/// executions need the execution in the table. Only the parts the batch has are in it: one
/// text per combination of starts, tasks and ends. Each is planned once per connection (see
/// `open.rs`), maybe while the tables are empty, so every lookup of `wf_executions` also
/// says `id = ANY(ids)`: whatever join the planner picks, the table side is then an index
/// probe per id, never a scan of the unfinished (or all) executions. `cfg` (`$1`) makes a
/// Buffered commit asynchronous (`off`) or leaves the server's setting (NULL); it is read
/// when the statement commits.
fn write_one_sql(parts: Parts) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..32u8)
            .map(|m| {
                build_write_one(Parts {
                    starts: m & 1 != 0,
                    new_tasks: m & 2 != 0,
                    tasks: m & 4 != 0,
                    ends: m & 8 != 0,
                    fenced: m & 16 != 0,
                })
            })
            .collect()
    });
    let m = usize::from(parts.starts)
        | usize::from(parts.new_tasks) << 1
        | usize::from(parts.tasks) << 2
        | usize::from(parts.ends) << 3
        | usize::from(parts.fenced) << 4;
    all.get(m).map_or("", String::as_str)
}

/// Which parts a batch's statement has.
#[derive(Debug, Clone, Copy)]
struct Parts {
    /// Execution starts (each with its end, if the batch has it).
    starts: bool,
    /// Task outcomes of executions the batch starts: no lookup (a separate part, not an
    /// `OR` beside the lookup, which would make it a subplan hashing the whole table).
    new_tasks: bool,
    /// Task outcomes of other executions: recorded if the execution is in the table.
    tasks: bool,
    /// Ends of other executions.
    ends: bool,
    /// Task outcomes and ends only of executions the writer (`$2`) holds.
    fenced: bool,
}

fn build_write_one(
    Parts {
        starts,
        new_tasks,
        tasks,
        ends,
        fenced,
    }: Parts,
) -> String {
    let mut n = 2; // $1: cfg, $2: the writer (NULL when not fenced)
    let mut params = |types: &[&str]| -> String {
        types
            .iter()
            .map(|t| {
                n += 1;
                format!("${n}::{t}[]")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // `$2` appears here whether or not it is used, so its type is always known.
    let mut parts = vec!["cfg AS (SELECT CASE WHEN $1::TEXT IS NULL THEN NULL \
         ELSE set_config('synchronous_commit', $1::TEXT, true) END AS v, $2::TEXT AS writer)"
        .to_owned()];
    // A fenced write touches only rows the writer holds.
    let held = |row: &str| {
        if fenced {
            format!(" AND {row}.owner = $2::TEXT")
        } else {
            String::new()
        }
    };
    if starts {
        let p = params(&[
            "BIGINT", "TEXT", "TEXT", "BYTEA", "BIGINT", "TEXT", "BIGINT", "BIGINT", "BYTEA",
            "TEXT", "BIGINT",
        ]);
        // A second start changes nothing; an end written with a start ends an execution a
        // lost-answer retry already started (the first end wins: only a running row).
        parts.push(format!(
            "s AS (INSERT INTO wf_executions AS x \
             (id, workflow, version, input, created_at_us, owner, lease_until_us, status, \
              final_context, error, finished_at_us) \
             SELECT u.id, u.workflow, u.version, u.input, u.created, u.owner, u.lease, \
              u.status, u.ctx, u.error, u.at \
             FROM UNNEST({p}) \
              AS u(id, workflow, version, input, created, owner, lease, status, ctx, error, at) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, \
              final_context = EXCLUDED.final_context, error = EXCLUDED.error, \
              finished_at_us = EXCLUDED.finished_at_us \
             WHERE x.status = 0 AND EXCLUDED.status <> 0{})",
            held("x")
        ));
    }
    let task_params = [
        "BIGINT", "TEXT", "BIGINT", "BIGINT", "BYTEA", "TEXT", "BIGINT", "BIGINT",
    ];
    let insert_tasks = |name: &str, p: &str, filter: &str| {
        format!(
            "{name} AS (INSERT INTO wf_tasks \
             (execution_id, task, outcome, attempts, output, error, started_at_us, finished_at_us) \
             SELECT u.id, u.task, u.outcome, u.attempts, u.output, u.error, u.started, u.finished \
             FROM UNNEST({p}) AS u(id, task, outcome, attempts, output, error, started, finished) \
             {filter} ON CONFLICT (execution_id, task) DO NOTHING)"
        )
    };
    // The ids arrays of the task outcomes and ends: with a fence, the statement returns
    // those of executions another runner holds (their records were dropped).
    let mut fenced_ids: Vec<String> = Vec::new();
    if new_tasks {
        let p = params(&task_params);
        fenced_ids.push(first_param(&p).to_owned());
        // Fenced: not if the start was there already, held by another runner.
        let filter = if fenced {
            let ids = first_param(&p);
            format!(
                "WHERE NOT EXISTS (SELECT 1 FROM wf_executions e WHERE e.id = u.id \
                 AND e.id = ANY({ids}) AND e.owner <> $2::TEXT)"
            )
        } else {
            String::new()
        };
        parts.push(insert_tasks("tn", &p, &filter));
    }
    if tasks {
        let p = params(&task_params);
        let ids = first_param(&p);
        fenced_ids.push(ids.to_owned());
        let filter = format!(
            "WHERE EXISTS (SELECT 1 FROM wf_executions e WHERE e.id = u.id AND e.id = ANY({ids}){})",
            held("e")
        );
        parts.push(insert_tasks("t", &p, &filter));
    }
    if ends {
        let p = params(&["BIGINT", "BIGINT", "BYTEA", "TEXT", "BIGINT"]);
        let ids = first_param(&p);
        fenced_ids.push(ids.to_owned());
        parts.push(format!(
            "e AS (UPDATE wf_executions e \
             SET status = u.status, final_context = u.ctx, error = u.error, finished_at_us = u.at \
             FROM UNNEST({p}) AS u(id, status, ctx, error, at) \
             WHERE e.id = u.id AND e.id = ANY({ids}) AND e.status = 0{})",
            held("e")
        ));
    }
    let dropped = if fenced && !fenced_ids.is_empty() {
        format!(
            "ARRAY(SELECT e.id FROM wf_executions e WHERE e.id = ANY({}) AND e.owner <> $2::TEXT)",
            fenced_ids.join(" || ")
        )
    } else {
        "ARRAY[]::BIGINT[]".to_owned()
    };
    format!(
        "WITH {} SELECT (SELECT count(*) FROM cfg WHERE v IS NOT NULL OR v IS NULL), {dropped}",
        parts.join(", ")
    )
}

/// The first of a comma-separated parameter list (the ids array).
fn first_param(params: &str) -> &str {
    params.split(", ").next().unwrap_or(params)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds execution starts, each with its end if the batch has one (`ended`, in the same
/// order), as the 11 arrays the statement unnests.
fn bind_starts<'q>(
    q: PgQuery<'q>,
    s: &[&'q ExecutionRecord],
    ended: &[Option<&'q ExecutionEndRecord>],
) -> PgQuery<'q> {
    q.bind(s.iter().map(|r| sql_id(r.id)).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.workflow.as_str()).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.version.as_str()).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.input.as_slice()).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.created_at_unix_us).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.owner.as_str()).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.lease_until_unix_us).collect::<Vec<_>>())
        .bind(
            ended
                .iter()
                .map(|e| e.map_or(0, |e| e.status.code()))
                .collect::<Vec<_>>(),
        )
        .bind(
            ended
                .iter()
                .map(|e| e.map(|e| e.final_context.as_slice()))
                .collect::<Vec<_>>(),
        )
        .bind(
            ended
                .iter()
                .map(|e| e.and_then(|e| e.error.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(
            ended
                .iter()
                .map(|e| e.map(|e| e.finished_at_unix_us))
                .collect::<Vec<_>>(),
        )
}

/// Binds task outcomes as the 8 arrays the statements unnest.
fn bind_tasks<'q>(q: PgQuery<'q>, t: &[&'q TaskRecord]) -> PgQuery<'q> {
    q.bind(t.iter().map(|r| sql_id(r.execution_id)).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.task.as_str()).collect::<Vec<_>>())
        .bind(
            t.iter()
                .map(|r| outcome_code(r.outcome))
                .collect::<Vec<_>>(),
        )
        .bind(t.iter().map(|r| i64::from(r.attempts)).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.output.as_slice()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.started_at_unix_us).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.finished_at_unix_us).collect::<Vec<_>>())
}

/// Binds execution ends as the 5 arrays the statements unnest.
fn bind_ends<'q>(q: PgQuery<'q>, e: &[&'q ExecutionEndRecord]) -> PgQuery<'q> {
    q.bind(e.iter().map(|r| sql_id(r.execution_id)).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.status.code()).collect::<Vec<_>>())
        .bind(
            e.iter()
                .map(|r| r.final_context.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(e.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.finished_at_unix_us).collect::<Vec<_>>())
}

fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A staged batch in the statement's parts (see [`write_one_sql`]).
struct Batch<'a> {
    starts: Vec<&'a ExecutionRecord>,
    /// Per start, its end if the batch has one.
    ended: Vec<Option<&'a ExecutionEndRecord>>,
    /// Task outcomes of executions the batch starts.
    new_tasks: Vec<&'a TaskRecord>,
    /// Task outcomes of other executions.
    tasks: Vec<&'a TaskRecord>,
    /// Ends of other executions.
    ends: Vec<&'a ExecutionEndRecord>,
}

impl<'a> Batch<'a> {
    fn of(staged: &crate::sql::workflows::Staged<'a>) -> Self {
        // Each started execution, with its end once found.
        let mut started: std::collections::HashMap<u64, Option<&'a ExecutionEndRecord>> =
            staged.starts.iter().map(|s| (s.id, None)).collect();
        let mut ends = Vec::with_capacity(staged.ends.len());
        for e in &staged.ends {
            match started.get_mut(&e.execution_id) {
                Some(end) => *end = Some(*e),
                None => ends.push(*e),
            }
        }
        let ended = staged
            .starts
            .iter()
            .map(|s| started.get(&s.id).copied().flatten())
            .collect();
        let (new_tasks, tasks) = staged
            .tasks
            .iter()
            .partition(|t| started.contains_key(&t.execution_id));
        Self {
            starts: staged.starts.clone(),
            ended,
            new_tasks,
            tasks,
            ends,
        }
    }
}

impl PostgresLedger {
    /// One write per connection of its own: the server runs them side by side (measured
    /// with the runner's simple workflows: 8.3k workflows/s with one, 10.2k with two).
    pub(super) fn workflow_write_slots(&self) -> usize {
        WORKFLOW_WRITE_CONNECTIONS as usize
    }

    pub(super) async fn write_workflow_records(
        &self,
        records: &[WorkflowRecord],
        commit: Commit,
        fence: Option<&str>,
    ) -> Result<Vec<u64>, LedgerError> {
        let staged = stage(BACKEND, records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Batch::of(&staged);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_write(&batch, commit, fence).await {
                Ok(dropped) => {
                    if submits_work(records) {
                        self.announce_work().await;
                    }
                    return Ok(dropped
                        .into_iter()
                        .filter_map(|id| u64::try_from(id).ok())
                        .collect());
                }
                Err(e) if retryable(&e) && tries < APPEND_TRIES => {
                    tracing::debug!(error = %e, "postgres workflow store: write aborted, trying again");
                }
                Err(e) => return Err(self.err("cannot record workflow records")(e)),
            }
        }
    }

    async fn try_write(
        &self,
        batch: &Batch<'_>,
        commit: Commit,
        fence: Option<&str>,
    ) -> Result<Vec<i64>, sqlx::Error> {
        let sql = write_one_sql(Parts {
            starts: !batch.starts.is_empty(),
            new_tasks: !batch.new_tasks.is_empty(),
            tasks: !batch.tasks.is_empty(),
            ends: !batch.ends.is_empty(),
            fenced: fence.is_some(),
        });
        let mut q = sqlx::query(sql)
            .bind((commit == Commit::Buffered).then_some("off"))
            .bind(fence);
        if !batch.starts.is_empty() {
            q = bind_starts(q, &batch.starts, &batch.ended);
        }
        if !batch.new_tasks.is_empty() {
            q = bind_tasks(q, &batch.new_tasks);
        }
        if !batch.tasks.is_empty() {
            q = bind_tasks(q, &batch.tasks);
        }
        if !batch.ends.is_empty() {
            q = bind_ends(q, &batch.ends);
        }
        let row = q.fetch_one(&self.workflow_writes).await?;
        sqlx::Row::try_get::<Vec<i64>, _>(&row, 1)
    }

    pub(super) async fn read_execution(
        &self,
        id: u64,
    ) -> Result<Option<StoredExecution>, LedgerError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let row: Option<ExecRow> = sqlx::query_as(&format!(
            "SELECT {EXEC_COLUMNS} FROM wf_executions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err(&format!("cannot read execution {id}")))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tasks: Vec<TaskRow> = sqlx::query_as(&format!(
            "SELECT {TASK_COLUMNS} FROM wf_tasks WHERE execution_id = $1 ORDER BY task"
        ))
        .bind(id)
        .fetch_all(&self.pool)
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("cannot begin a claim"))?;
        // The claim must walk the unfinished index in id order and stop at `limit`: with a
        // backlog, statistics taken while the table was small make the planner fetch every
        // unfinished row and sort them (measured: 8-11 ms per claim with 20,000 waiting,
        // against 1.9 ms in index order).
        sqlx::query(
            "SELECT set_config('enable_bitmapscan', 'off', true), \
             set_config('enable_sort', 'off', true)",
        )
        .execute(&mut *tx)
        .await
        .map_err(self.err("cannot begin a claim"))?;
        // A row taken from another runner (not submitted unclaimed, not this one's) counts
        // a takeover; `x` is the row as it was.
        let mut rows: Vec<ExecRow> = sqlx::query_as(&format!(
            "UPDATE wf_executions w SET owner = $1, lease_until_us = $3, \
                 takeovers = w.takeovers + CASE WHEN x.owner <> '' AND x.owner <> $1 \
                     THEN 1 ELSE 0 END \
             FROM (SELECT id, owner FROM wf_executions \
                 WHERE status = 0 \
                 AND (lease_until_us < $2 OR ($5::TEXT[] IS NULL AND owner = $1)) \
                 AND ($5::TEXT[] IS NULL OR workflow = ANY($5::TEXT[])) \
                 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) x \
             WHERE w.id = x.id \
             RETURNING {}",
            EXEC_COLUMNS
                .split(", ")
                .map(|c| format!("w.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(owner)
        .bind(now)
        .bind(until)
        .bind(limit)
        .bind(workflows)
        .fetch_all(&mut *tx)
        .await
        .map_err(self.err("cannot claim executions"))?;
        rows.sort_by_key(|r| r.0);
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let tasks: Vec<TaskRow> = sqlx::query_as(&format!(
            "SELECT {TASK_COLUMNS} FROM wf_tasks WHERE execution_id = ANY($1) \
             ORDER BY execution_id, task"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(self.err("cannot read the tasks of claimed executions"))?;
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
        // Rows locked in id order, as ends lock them: no deadlock with a concurrent write.
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE wf_executions SET lease_until_us = $1 WHERE id IN ( \
                 SELECT id FROM wf_executions WHERE status = 0 AND owner = $2 \
                 ORDER BY id FOR UPDATE) RETURNING id",
        )
        .bind(until)
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("cannot renew leases"))?;
        Ok(ids
            .into_iter()
            .filter_map(|id| u64::try_from(id).ok())
            .collect())
    }

    pub(super) async fn reserve_ids(&self, count: u64) -> Result<u64, LedgerError> {
        let count = i64::try_from(count.max(1)).unwrap_or(i64::MAX);
        let last: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = value + $1 WHERE key = 'last_execution_id' RETURNING value",
        )
        .bind(count)
        .fetch_one(&self.pool)
        .await
        .map_err(self.err("cannot reserve execution ids"))?;
        Ok(u64::try_from(last - count + 1).unwrap_or(1))
    }
}
