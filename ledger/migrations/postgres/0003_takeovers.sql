-- Times a runner took an execution over from another whose lease had expired: what caps
-- the re-runs of an execution that kills its runners (see `WorkflowStore::claim_expired`).
ALTER TABLE wf_executions ADD COLUMN takeovers BIGINT NOT NULL DEFAULT 0;
