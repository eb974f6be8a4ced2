//! The durable runner on the SQL backends: execute, and tenants kept apart
//! (`DefaultRunner::with_schema`).

use cloacina::prelude::*;
use serde_json::json;

fn counting() -> Workflow {
    let fetch = FnTask::new("fetch", [] as [&str; 0], |mut ctx: Context| async move {
        ctx.insert("rows", json!([1, 2, 3]))?;
        Ok(ctx)
    });
    let count = FnTask::new("count", ["fetch"], |mut ctx: Context| async move {
        let n = ctx
            .get("rows")
            .and_then(|v| v.as_array())
            .map_or(0, Vec::len);
        ctx.insert("count", json!(n))?;
        Ok(ctx)
    });
    Workflow::builder("counting")
        .task(fetch)
        .task(count)
        .build()
        .expect("valid")
}

async fn runs_on(url: &str) {
    let runner = DefaultRunner::new(url).await.expect("runner");
    runner.register_workflow(counting()).expect("register");
    let result = runner
        .execute("counting", Context::new())
        .await
        .expect("execute");
    assert_eq!(
        result.status,
        WorkflowStatus::Completed,
        "{url}: {result:?}"
    );
    assert_eq!(result.final_context.get("count"), Some(&json!(3)));
    runner.shutdown().await.expect("shutdown");
    drop(runner);
    // Another runner on the same store reads the ended execution.
    let again = DefaultRunner::new(url).await.expect("reopen");
    let stored = again.wait(result.execution_id).await.expect("stored");
    assert_eq!(stored.status, WorkflowStatus::Completed);
    assert_eq!(stored.final_context.get("count"), Some(&json!(3)));
    again.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn runs_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    runs_on(&format!("sqlite://{}", dir.path().join("wf.db").display())).await;
}

#[tokio::test]
async fn runs_on_postgres_and_tenants_do_not_see_each_other() {
    let Some(base) = cloacina::ledger::testing::postgres_url() else {
        return;
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let (a, b) = (
        format!("wf_tenant_a_{stamp}"),
        format!("wf_tenant_b_{stamp}"),
    );
    runs_on(&cloacina::ledger::tenant_url(&base, &a).expect("url")).await;

    let tenant_a = DefaultRunner::with_schema(&base, &a)
        .await
        .expect("tenant a");
    let tenant_b = DefaultRunner::with_schema(&base, &b)
        .await
        .expect("tenant b");
    tenant_a.register_workflow(counting()).expect("register");
    let done = tenant_a
        .execute("counting", Context::new())
        .await
        .expect("execute");
    assert!(
        matches!(
            tenant_b.wait(done.execution_id).await,
            Err(RunnerError::UnknownExecution(_))
        ),
        "tenant b sees tenant a's execution"
    );
    tenant_a.shutdown().await.expect("shutdown");
    tenant_b.shutdown().await.expect("shutdown");
    for schema in [a, b] {
        let _ = std::process::Command::new("psql")
            .args([base.as_str(), "-qc"])
            .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .output();
    }
}
