-- The workflow store (see `cloacina_ledger::WorkflowStore`). Contexts are opaque bytes
-- (the runner writes JSON). `status`: 0 running, 1 completed, 2 failed, 3 cancelled.
-- `owner` / `lease_until_us`: the runner that drives the execution and until when.

CREATE TABLE wf_executions (
    id             INTEGER NOT NULL PRIMARY KEY,
    workflow       TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    input          BLOB    NOT NULL,
    created_at_us  INTEGER NOT NULL,
    owner          TEXT    NOT NULL,
    lease_until_us INTEGER NOT NULL,
    status         INTEGER NOT NULL,
    final_context  BLOB,
    error          TEXT,
    finished_at_us INTEGER
);

-- What claims scan: executions that have not ended.
CREATE INDEX wf_executions_unfinished ON wf_executions (id) WHERE status = 0;

-- `outcome`: 0 completed, 1 failed.
CREATE TABLE wf_tasks (
    execution_id   INTEGER NOT NULL,
    task           TEXT    NOT NULL,
    outcome        INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    output         BLOB    NOT NULL,
    error          TEXT,
    started_at_us  INTEGER NOT NULL,
    finished_at_us INTEGER NOT NULL,
    PRIMARY KEY (execution_id, task)
) WITHOUT ROWID;

INSERT INTO ledger_meta (key, value) VALUES ('last_execution_id', 0);
