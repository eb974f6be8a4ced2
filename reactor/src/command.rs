//! Commands a [`crate::ReactorHandle`] sends to its reactor's loop.

use std::sync::Arc;

use cloacina_graph_core::InputCache;
use tokio::sync::oneshot;

use crate::error::{ReactorError, ReactorState, ShutdownReport};
use crate::firing::Firing;
use crate::subscription::Subscriber;

/// One request to the loop; the loop answers on the oneshot.
pub(crate) enum Command {
    ForceFire(oneshot::Sender<Arc<Firing>>),
    FireWith(
        InputCache,
        oneshot::Sender<Result<Arc<Firing>, ReactorError>>,
    ),
    Pause(oneshot::Sender<()>),
    Resume(oneshot::Sender<()>),
    State(oneshot::Sender<ReactorState>),
    Subscribe(Subscriber),
    PrepareShutdown(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<ShutdownReport>),
}
