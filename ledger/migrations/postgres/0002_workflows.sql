-- The workflow store (see `cloacina_ledger::WorkflowStore`). Contexts are opaque bytes
-- (the runner writes JSON). `status`: 0 running, 1 completed, 2 failed, 3 cancelled.
-- `owner` / `lease_until_us`: the runner that drives the execution and until when.

CREATE TABLE wf_executions (
    id             BIGINT PRIMARY KEY,
    workflow       TEXT COLLATE "C" NOT NULL,
    version        TEXT COLLATE "C" NOT NULL,
    input          BYTEA    NOT NULL,
    created_at_us  BIGINT NOT NULL,
    owner          TEXT COLLATE "C" NOT NULL,
    lease_until_us BIGINT NOT NULL,
    status         BIGINT NOT NULL,
    final_context  BYTEA,
    error          TEXT,
    finished_at_us BIGINT
);

-- What claims scan: executions that have not ended.
CREATE INDEX wf_executions_unfinished ON wf_executions (id) WHERE status = 0;

-- `outcome`: 0 completed, 1 failed.
CREATE TABLE wf_tasks (
    execution_id   BIGINT NOT NULL,
    task           TEXT COLLATE "C" NOT NULL,
    outcome        BIGINT NOT NULL,
    attempts       BIGINT NOT NULL,
    output         BYTEA    NOT NULL,
    error          TEXT,
    started_at_us  BIGINT NOT NULL,
    finished_at_us BIGINT NOT NULL,
    PRIMARY KEY (execution_id, task)
);

INSERT INTO meta (key, value) VALUES ('last_execution_id', 0);
