//! Fan-out of event batches to their consumers (event sinks; later plugins and scripts).
//!
//! Each consumer has its own bounded queue: a slow consumer loses batches, counted per
//! consumer in `sonde_consumer_events_dropped_total`, and never slows the probes or the
//! other consumers.

use std::sync::{Arc, RwLock};

use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::mpsc;

use crate::event::{Batch, Event};

struct Consumer {
    name: String,
    queue: mpsc::Sender<Batch>,
    dropped: IntCounter,
    /// Event types it takes; `None` for all.
    accepts: Option<Vec<String>>,
}

pub struct FanOut {
    consumers: RwLock<Vec<Consumer>>,
    dropped: IntCounterVec,
}

impl FanOut {
    pub fn new(dropped: IntCounterVec) -> Arc<Self> {
        Arc::new(FanOut {
            consumers: RwLock::new(Vec::new()),
            dropped,
        })
    }

    /// Adds a consumer (replacing one of the same name) with a queue of `capacity` batches;
    /// what it loses is counted in `sonde_consumer_events_dropped_total{consumer=name}`.
    pub fn subscribe(&self, name: &str, capacity: usize) -> mpsc::Receiver<Batch> {
        self.subscribe_counted(
            name,
            capacity,
            self.dropped.with_label_values(&[name]),
            None,
        )
    }

    /// As [`FanOut::subscribe`], counting lost events in `dropped`, and taking only the event
    /// types in `accepts` when given. Replacing a consumer is atomic: the old queue closes as
    /// the new one opens.
    pub fn subscribe_counted(
        &self,
        name: &str,
        capacity: usize,
        dropped: IntCounter,
        accepts: Option<Vec<String>>,
    ) -> mpsc::Receiver<Batch> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut consumers = self.consumers.write().unwrap_or_else(|e| e.into_inner());
        consumers.retain(|c| c.name != name);
        consumers.push(Consumer {
            name: name.to_string(),
            queue: tx,
            dropped,
            accepts,
        });
        rx
    }

    /// Removes a consumer; its receiver sees the end of the stream.
    pub fn unsubscribe(&self, name: &str) {
        self.consumers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.name != name);
    }

    /// Hands a batch to every consumer that takes its type. A batch holds events of one type
    /// (a probe's drain publishes its own; a plugin's event goes alone).
    pub fn publish(&self, events: Vec<Event>) {
        let Some(first) = events.first() else { return };
        let n = events.len() as u64;
        let type_name = first.kind.type_name().to_string();
        let batch: Batch = Arc::new(events);
        let mut closed = false;
        for c in self
            .consumers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if c.accepts.as_ref().is_some_and(|a| !a.contains(&type_name)) {
                continue;
            }
            match c.queue.try_send(Arc::clone(&batch)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => c.dropped.inc_by(n),
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            self.consumers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| !c.queue.is_closed());
        }
    }
}
