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

/// Starts `subscription`'s workflow for each firing of `reactor` it accepts, in process:
/// the reactor's stream is subscribed first, then the firings the runner's ledger holds
/// past the subscription's stored position are caught up, then pushed firings are
/// handled as they come (no polling). Each firing starts at most one execution, whose
/// input carries `reactor_firing_id` (see [`ReactorSubscription`]).
///
/// Durable when the reactor records its firings into the runner's ledger: after a
/// restart, calling this again resumes from the stored position. A firing the runner
/// could not start (a store error) is retried, holding the stream back, until it starts
/// or the runner shuts down. The returned task ends when the reactor stops or the runner
/// shuts down, after saving the position.
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
    // Subscribed before the catch-up: a firing is either in the ledger read or pushed
    // (or both: the sink starts it once).
    let mut stream = reactor.subscribe_with(options);
    let mut sink = runner.subscribe_reactor(subscription).await?;
    sink.catch_up().await?;
    let reactor = reactor.clone();
    Ok(tokio::spawn(async move {
        'stream: loop {
            match stream.recv().await {
                Some(Ok(firing)) => {
                    let record = firing.to_record();
                    let mut pause = Duration::from_millis(50);
                    loop {
                        match sink.deliver(&record).await {
                            Ok(()) => break,
                            Err(RunnerError::ShuttingDown) => break 'stream,
                            Err(e) => {
                                tracing::warn!(error = %e, firing = record.firing_id,
                                    "cannot start a subscribed workflow; retrying");
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(Duration::from_secs(5));
                            }
                        }
                    }
                }
                Some(Err(lagged)) => {
                    tracing::warn!(%lagged, "workflow subscription fell behind its reactor; reading the ledger");
                    if let Err(e) = sink.catch_up().await {
                        tracing::warn!(error = %e, "catch-up from the ledger failed");
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
                    if let Err(e) = sink.catch_up().await {
                        tracing::warn!(error = %e, "catch-up from the ledger failed");
                    }
                }
            }
        }
        if let Err(e) = sink.save().await {
            tracing::warn!(error = %e, "cannot save the workflow subscription's position");
        }
    }))
}
