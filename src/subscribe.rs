//! Reactor-started workflows: a reactor's firings pushed, in process, into a durable
//! workflow subscription (see [`crate::workflow::ReactorSubscription`]).

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::reactor::{Overflow, ReactorHandle, ReactorHealth, SubscribeOptions};
use crate::workflow::{DefaultRunner, ReactorSubscription, RunnerError};

/// Firings queued for the subscription at most; a full queue holds the reactor back (up
/// to [`MAX_WAIT`]): the runner's pace is the reactor's.
const QUEUE: usize = 4_096;
/// How long the reactor waits for room before it detaches the subscription; it is then
/// subscribed again and what it missed is read back from the ledger.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often the task saves the subscription's position.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// Starts `subscription`'s workflow for each firing of `reactor` it accepts, in process:
/// the subscription's sink is opened (a new subscription starts after the reactor's last
/// recorded firing), then the reactor's stream is subscribed, then the firings the
/// runner's ledger holds past the position are caught up, then pushed firings are handled
/// as they come (no polling). Each firing starts at most one execution, whose input
/// carries `reactor_firing_id` (see [`ReactorSubscription`]).
///
/// Durable when the reactor records its firings into the runner's ledger: calling this
/// again after a restart resumes from the stored position (saved every 100 ms). A start
/// that fails on a store error is retried, holding the stream back, and a firing the
/// stream missed (a lag, a detach) is read from the ledger; neither is skipped. Other
/// errors (the workflow no longer registered) end the task, logged, with the position
/// before the firing. The task ends when the reactor stops or the runner begins to shut
/// down, after saving the position; it holds a handle of the reactor until then.
pub async fn subscribe_workflow(
    reactor: &ReactorHandle,
    runner: &DefaultRunner,
    subscription: ReactorSubscription,
) -> Result<JoinHandle<()>, RunnerError> {
    if subscription.reactor != reactor.name() {
        return Err(RunnerError::InvalidSubscription {
            name: subscription.name.clone(),
            reason: format!(
                "it names reactor `{}`, not `{}`",
                subscription.reactor,
                reactor.name()
            ),
        });
    }
    let options = SubscribeOptions {
        capacity: QUEUE,
        overflow: Overflow::Block { max_wait: MAX_WAIT },
    };
    // The position first, then the stream, then the ledger: a firing after the position
    // is pushed, or in the ledger, or (the ledger's writer lagging) waited for by the
    // sink when a later one is pushed.
    let mut sink = runner.subscribe_reactor(subscription).await?;
    let mut stream = reactor.subscribe_with(options);
    sink.catch_up().await?;
    let reactor = reactor.clone();
    let runner = runner.clone();
    Ok(tokio::spawn(async move {
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopping = runner.shutting_down();
        tokio::pin!(stopping);
        'stream: loop {
            let item = tokio::select! {
                item = stream.recv() => item,
                _ = save.tick() => {
                    if let Err(e) = sink.save().await {
                        tracing::warn!(error = %e, "cannot save a workflow subscription's position");
                    }
                    continue;
                }
                () = &mut stopping => break,
            };
            match item {
                Some(Ok(firing)) => {
                    let record = firing.to_record();
                    let mut pause = Duration::from_millis(50);
                    loop {
                        match sink.deliver(&record).await {
                            Ok(()) => break,
                            Err(e) if retryable(&e) => {
                                tracing::warn!(error = %e, firing = record.firing_id,
                                    "cannot start a subscribed workflow; retrying");
                                if pause_or_stop(&runner, pause).await {
                                    break 'stream;
                                }
                                pause = (pause * 2).min(Duration::from_secs(5));
                            }
                            Err(RunnerError::ShuttingDown) => break 'stream,
                            Err(e) => {
                                tracing::error!(error = %e, firing = record.firing_id,
                                    "workflow subscription stopped: cannot start its workflow");
                                break 'stream;
                            }
                        }
                    }
                }
                Some(Err(lagged)) => {
                    tracing::warn!(%lagged, "workflow subscription fell behind its reactor; reading the ledger");
                    if !catch_up(&mut sink, &runner).await {
                        break;
                    }
                }
                None => {
                    if matches!(
                        reactor.health(),
                        ReactorHealth::Stopped | ReactorHealth::Failed { .. }
                    ) {
                        break;
                    }
                    // Detached while the reactor runs: subscribe again, read what was missed.
                    stream = reactor.subscribe_with(options);
                    if !catch_up(&mut sink, &runner).await {
                        break;
                    }
                }
            }
        }
        if let Err(e) = sink.save().await {
            tracing::warn!(error = %e, "cannot save the workflow subscription's position");
        }
    }))
}

/// A store error: worth trying again.
fn retryable(e: &RunnerError) -> bool {
    matches!(e, RunnerError::Ledger(_) | RunnerError::Store(_))
}

/// Sleeps `pause`; `true` if the runner began to shut down meanwhile.
async fn pause_or_stop(runner: &DefaultRunner, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => false,
        () = runner.shutting_down() => true,
    }
}

/// Catches the sink up from the ledger, retrying store errors until it succeeds; `false`
/// if the task should end (the runner stopping, or an error that retrying cannot fix).
async fn catch_up(sink: &mut crate::workflow::FiringSink, runner: &DefaultRunner) -> bool {
    let mut pause = Duration::from_millis(50);
    loop {
        match sink.catch_up().await {
            Ok(_) => return true,
            Err(e) if retryable(&e) => {
                tracing::warn!(error = %e, "catch-up from the ledger failed; retrying");
                if pause_or_stop(runner, pause).await {
                    return false;
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(RunnerError::ShuttingDown) => return false,
            Err(e) => {
                tracing::error!(error = %e, "workflow subscription stopped: catch-up failed");
                return false;
            }
        }
    }
}
