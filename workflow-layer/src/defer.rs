//! [`TaskHandle`]: what a running task can ask of the runner; for now, to wait for a
//! condition without holding a concurrency slot ([`TaskHandle::defer_until`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

tokio::task_local! {
    static SLOT: Arc<Slot>;
}

/// The concurrency slot an attempt holds (none outside a runner).
#[derive(Debug, Default)]
pub(crate) struct Slot {
    slots: Option<Arc<Semaphore>>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Slot {
    /// Takes a slot of `slots` (waits for one), or none without a limit.
    pub(crate) async fn acquire(slots: Option<&Arc<Semaphore>>) -> Arc<Self> {
        let permit = match slots {
            Some(s) => Arc::clone(s).acquire_owned().await.ok(),
            None => None,
        };
        Arc::new(Self {
            slots: slots.cloned(),
            permit: Mutex::new(permit),
        })
    }

    /// Gives the slot back (the attempt ended).
    pub(crate) fn release(&self) {
        drop(self.take());
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.permit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Runs `attempt` with this slot visible to [`TaskHandle::current`].
    pub(crate) async fn scope<F: Future>(self: Arc<Self>, attempt: F) -> F::Output {
        SLOT.scope(self, attempt).await
    }
}

/// A running task's line to its runner. Get it with [`TaskHandle::current`] inside a task,
/// or as the optional second argument of a `#[task]` function
/// (`async fn f(ctx: &mut Context<Value>, handle: &mut TaskHandle)`).
#[derive(Debug, Clone, Default)]
pub struct TaskHandle {
    slot: Option<Arc<Slot>>,
}

impl TaskHandle {
    /// The handle of the task attempt running on this tokio task (a handle that holds no
    /// slot outside a runner).
    pub fn current() -> Self {
        Self {
            slot: SLOT.try_with(Arc::clone).ok(),
        }
    }

    /// Waits until `condition` is true, checking it every `poll`. While it waits the task
    /// holds none of the runner's concurrency slots (other tasks run in its place); it
    /// takes one again before it goes on. A condition already true returns at once. The
    /// task's timeout, if it has one, still counts.
    pub async fn defer_until<F, Fut>(&mut self, mut condition: F, poll: Duration)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        if condition().await {
            return;
        }
        let released = self.slot.as_ref().and_then(|s| s.take());
        let held = released.is_some();
        drop(released);
        tracing::debug!(slot_released = held, ?poll, "task deferred");
        loop {
            tokio::time::sleep(poll).await;
            if condition().await {
                break;
            }
        }
        if held {
            if let Some(slot) = &self.slot {
                if let Some(slots) = &slot.slots {
                    let permit = Arc::clone(slots).acquire_owned().await.ok();
                    *slot
                        .permit
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = permit;
                }
            }
        }
    }
}
