//! # cloacina-workflow-layer
//!
//! DAG workflows (tasks, `Context`, retries, trigger rules, cron, triggers) run as
//! trigger-less graph invocations over the ledger. This crate is the skeleton the workflow
//! issues fill in; it exports nothing yet.
