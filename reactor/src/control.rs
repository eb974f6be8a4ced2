//! The reactor loop's commands: each handled in order after the boundaries queued before
//! it ([`Core::ordered`]), and shutdown (take everything in, fire what is owed, close the
//! ledger and the subscribers).

use std::sync::atomic::Ordering;

use crate::command::Command;
use crate::config::InputStrategy;
use crate::core::{Core, Flow, BATCH};
use crate::error::{ReactorState, ShutdownReport};
use crate::health::ReactorHealth;

impl Core {
    /// Takes in every boundary queued when a command arrived (in chunks, within the room
    /// there is), firing for them as usual, so the command sees them all. `fire_all`
    /// (`force_fire`, `fire_with`): Sequential also fires every queued boundary first, so the
    /// manual firing comes after theirs, in order. Other commands (`state`, `pause`, ...) do
    /// not wait for a backlog to fire: they see it queued.
    pub(crate) async fn catch_up(&mut self, fire_all: bool) {
        let mut pending = if self.intake.open {
            self.intake.rx.len()
        } else {
            0
        };
        while pending > 0 {
            let take = pending.min(self.room());
            if take == 0 {
                break;
            }
            let now = self.intake.stamp();
            let mut took = 0;
            while took < take {
                match self.intake.rx.try_recv() {
                    Ok(inb) => {
                        self.accept(inb, now);
                        took += 1;
                    }
                    Err(_) => break,
                }
            }
            if took == 0 {
                break;
            }
            pending -= took;
            self.after_intake().await;
            self.evaluate().await;
            self.maybe_snapshot().await;
        }
        if fire_all && self.trigger.owes_firings() {
            self.drain(false, usize::MAX).await;
        }
    }

    /// Handles one command in order (see [`Core::run`]).
    pub(crate) async fn ordered(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Subscribe(s) => self.subscribers.add(s),
            Command::Shutdown(reply) => {
                let report = self.shutdown().await;
                let _ = reply.send(report);
                return Flow::Stop;
            }
            cmd => {
                let fire_all = matches!(cmd, Command::ForceFire(_) | Command::FireWith(..));
                self.catch_up(fire_all).await;
                // The caller learns of the command after the subscribers have the firings
                // that came before it.
                self.send_held().await;
                self.command(cmd).await;
            }
        }
        Flow::Continue
    }

    pub(crate) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::ForceFire(reply) => {
                if let Some(firing) = self.fire(true, None).await {
                    let _ = reply.send(firing);
                }
            }
            Command::FireWith(cache, reply) => match self.manual_inputs(&cache) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(inputs) => {
                    if let Some(firing) = self.fire(true, Some(inputs)).await {
                        let _ = reply.send(Ok(firing));
                    }
                }
            },
            Command::PrepareShutdown(reply) => {
                self.draining = true;
                let _ = reply.send(());
            }
            Command::Pause(reply) => {
                self.trigger.pause();
                let _ = reply.send(());
            }
            Command::Resume(reply) => {
                self.trigger.resume();
                let _ = reply.send(());
                // Sequential work queued while paused is owed its firings; Latest fires on the
                // next boundary, not retroactively.
                if self.trigger.strategy() == InputStrategy::Sequential {
                    self.drain(false, BATCH).await;
                }
            }
            Command::State(reply) => {
                let _ = reply.send(self.state());
            }
            Command::Subscribe(subscriber) => self.subscribers.add(subscriber),
            Command::Shutdown(_) => {}
        }
    }

    pub(crate) fn state(&self) -> ReactorState {
        ReactorState {
            reactor: self.name.to_string(),
            cache: self.trigger.cache().snapshot(),
            dirty: self
                .sources
                .iter()
                .cloned()
                .zip(self.trigger.dirty().iter().copied())
                .collect(),
            queued: self
                .trigger
                .queue()
                .iter()
                .filter_map(|(i, b)| self.sources.get(*i).map(|s| (s.clone(), b.clone())))
                .collect(),
            paused: self.trigger.is_paused(),
            health: self.signals.health.borrow().clone(),
            fires: self.stats.fires.load(Ordering::Relaxed),
        }
    }

    /// Takes in everything already queued, fires what is owed, closes the ledger and the
    /// subscribers.
    pub(crate) async fn shutdown(&mut self) -> ShutdownReport {
        self.intake.rx.close();
        self.draining = true;
        let paused = self.trigger.is_paused();
        // Latest coalesces whatever is waiting; Sequential fires for all of it.
        let mut buf = std::mem::take(&mut self.intake.buf);
        while self.intake.rx.recv_many(&mut buf, BATCH).await > 0 {
            let now = self.intake.stamp();
            for inb in buf.drain(..) {
                self.accept(inb, now);
            }
            self.recorder.hand_over().await;
            if self.trigger.strategy() == InputStrategy::Sequential {
                self.drain(true, usize::MAX).await;
            }
        }
        if !paused {
            match self.trigger.strategy() {
                InputStrategy::Latest if self.trigger.criteria_met() => {
                    self.fire(false, None).await;
                }
                InputStrategy::Latest => {}
                InputStrategy::Sequential => self.drain(true, usize::MAX).await,
            }
        }
        let unfired_queued = self.trigger.queue().len();
        let unfired_dirty_sources = match self.trigger.strategy() {
            InputStrategy::Latest if paused => self.trigger.dirty_sources(),
            _ => 0,
        };
        if unfired_queued > 0 || unfired_dirty_sources > 0 {
            tracing::warn!(reactor = %self.name, unfired_queued, unfired_dirty_sources, "reactor stopped paused with inputs never fired");
        }
        // Everything is fired: the subscribers get what is held before the ledger closes
        // (the snapshot sends it first).
        // A final snapshot: a restart resumes exactly here without replaying boundaries.
        self.snapshot().await;
        self.publish_delivery();
        let recording = self.recorder.is_recording();
        let (written, unwritten) = self.recorder.close().await;
        if recording {
            // Closed: everything handed over has settled.
            let lost = unwritten > 0 || written.as_ref().is_some_and(|r| r.lost > 0);
            self.signals.watermarks.recorded(u64::MAX, u64::MAX, lost);
        }
        let mut report = ShutdownReport {
            fires: self.stats.fires.load(Ordering::Relaxed),
            boundaries: self.stats.boundaries.load(Ordering::Relaxed),
            unfired_queued,
            unfired_dirty_sources,
            ledger_records: 0,
            ledger_lost: unwritten,
            ledger_error: None,
        };
        if let Some(written) = written {
            report.ledger_records = written.written;
            report.ledger_lost += written.lost;
            report.ledger_error = written.first_error.map(|e| e.to_string());
        }
        self.subscribers.clear();
        self.set_health(ReactorHealth::Stopped);
        report
    }
}
