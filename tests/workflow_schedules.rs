//! Cron schedules with three runners that each open the store themselves (as separate
//! processes would): PostgreSQL (one schema) and a SQLite file. Every instant fires exactly
//! once, none is missed, and a disable made through one runner stops all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina::workflow::{Context, DefaultRunner, FnTask, Schedule, Workflow};

type Fired = Arc<Mutex<HashMap<String, u32>>>;

fn tick(fired: &Fired) -> Workflow {
    let fired = Arc::clone(fired);
    let task = FnTask::new("count", [] as [&str; 0], move |ctx: Context| {
        let at = ctx
            .get("scheduled_for")
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_owned();
        *fired.lock().expect("fired").entry(at).or_default() += 1;
        async move { Ok(ctx) }
    });
    Workflow::builder("tick").task(task).build().expect("valid")
}

/// Three runners on `url` (tenant `tenant`), an every-second schedule for about 4 s, then
/// disabled: every instant fired once, consecutive.
async fn three_runners_fire_each_instant_once(url: &str, tenant: Option<&str>) {
    let fired: Fired = Arc::default();
    let mut runners = Vec::new();
    for id in ["a", "b", "c"] {
        let mut builder = DefaultRunner::builder().url(url).runner_id(id);
        if let Some(t) = tenant {
            builder = builder.tenant(t);
        }
        let runner = builder.build().await.expect("runner");
        runner.register_workflow(tick(&fired)).expect("register");
        runners.push(runner);
    }
    for r in &runners {
        // Each runner of a deployment registers its schedules at start.
        r.register_schedule(Schedule::new("every-second", "tick", "* * * * * *"))
            .await
            .expect("register");
    }
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    runners[2]
        .disable_schedule("every-second")
        .await
        .expect("disable");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let settled = fired.lock().expect("fired").clone();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let got = fired.lock().expect("fired").clone();
    assert_eq!(got, settled, "nothing fires once disabled");
    assert!(got.values().all(|n| *n == 1), "fired twice: {got:?}");
    let mut seconds: Vec<i64> = got
        .keys()
        .map(|k| {
            chrono::DateTime::parse_from_rfc3339(k)
                .expect("rfc3339")
                .timestamp()
        })
        .collect();
    seconds.sort_unstable();
    assert!(seconds.len() >= 3, "{seconds:?}");
    assert!(
        seconds.windows(2).all(|w| w[1] == w[0] + 1),
        "none missed: {seconds:?}"
    );
    for r in &runners {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_runners_fire_each_instant_exactly_once() {
    let Some(url) = cloacina::ledger::testing::postgres_url() else {
        eprintln!("postgres_three_runners_fire_each_instant_exactly_once: skipped");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tenant = format!("cron_{}_{nanos}", std::process::id());
    three_runners_fire_each_instant_once(&url, Some(&tenant)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_three_runners_fire_each_instant_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("wf.db").display());
    three_runners_fire_each_instant_once(&url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_or_fires_another_tenants_schedules() {
    let Some(url) = cloacina::ledger::testing::postgres_url() else {
        eprintln!("a_tenant_never_sees_or_fires_another_tenants_schedules: skipped");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let (fired_a, fired_b): (Fired, Fired) = (Arc::default(), Arc::default());
    let mut runners = Vec::new();
    for (tenant, fired) in [("a", &fired_a), ("b", &fired_b)] {
        let runner = DefaultRunner::builder()
            .url(url.clone())
            .tenant(format!(
                "cron_tenant_{tenant}_{}_{nanos}",
                std::process::id()
            ))
            .build()
            .await
            .expect("runner");
        runner.register_workflow(tick(fired)).expect("register");
        runners.push(runner);
    }
    runners[0]
        .register_schedule(Schedule::new("every-second", "tick", "* * * * * *"))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(runners[1].schedules().await.expect("list").is_empty());
    assert!(
        fired_b.lock().expect("fired").is_empty(),
        "tenant b fired nothing"
    );
    assert!(
        !fired_a.lock().expect("fired").is_empty(),
        "tenant a fired its own"
    );
    for r in &runners {
        r.shutdown().await.expect("shutdown");
    }
}
