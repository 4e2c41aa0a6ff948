//! Fan-out of event batches to their consumers (event sinks; later plugins and scripts).
//!
//! Each consumer has its own bounded queue: a slow consumer loses batches, counted per
//! consumer in `sonde_consumer_events_dropped_total`, and never slows the probes or the
//! other consumers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// For a consumer bounded in bytes: what it has queued, against its limit.
    bytes: Option<Arc<QueuedBytes>>,
}

/// What an event is estimated to hold while queued: the event and its strings.
pub const EVENT_BYTES: u64 = 512;

/// The bytes a consumer bounded in bytes has queued (estimated, [`EVENT_BYTES`] an event),
/// its limit, and whether it fell further behind than that (and was let go).
#[derive(Debug)]
pub struct QueuedBytes {
    queued: AtomicU64,
    limit: u64,
    behind: AtomicBool,
}

/// The receiving end of a consumer bounded in bytes (see [`FanOut::subscribe_bytes`]).
pub struct BytesReceiver {
    queue: mpsc::Receiver<Batch>,
    bytes: Arc<QueuedBytes>,
}

impl BytesReceiver {
    /// The next batch; `None` once the consumer is let go and its queue is empty.
    pub async fn recv(&mut self) -> Option<Batch> {
        let batch = self.queue.recv().await?;
        self.bytes
            .queued
            .fetch_sub(batch.len() as u64 * EVENT_BYTES, Ordering::Relaxed);
        Some(batch)
    }

    /// Whether the consumer was let go for falling further behind than its limit.
    pub fn fell_behind(&self) -> bool {
        self.bytes.behind.load(Ordering::Relaxed)
    }
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
        self.add(name, capacity.max(1), dropped, accepts, None)
    }

    /// A consumer bounded in bytes rather than batches (an API stream): one that falls
    /// further behind than `limit` bytes of events is let go — its queue closes, so its
    /// reader sees the end once it has read what was queued — rather than left to lose
    /// batches while it holds its share of memory.
    pub fn subscribe_bytes(
        &self,
        name: &str,
        limit: u64,
        dropped: IntCounter,
        accepts: Option<Vec<String>>,
    ) -> BytesReceiver {
        let bytes = Arc::new(QueuedBytes {
            queued: AtomicU64::new(0),
            limit,
            behind: AtomicBool::new(false),
        });
        // The batch count never binds: the bytes do.
        let queue = self.add(name, 1 << 16, dropped, accepts, Some(Arc::clone(&bytes)));
        BytesReceiver { queue, bytes }
    }

    /// Adds a consumer, replacing one of the same name atomically: the old queue closes as
    /// the new one opens.
    fn add(
        &self,
        name: &str,
        capacity: usize,
        dropped: IntCounter,
        accepts: Option<Vec<String>>,
        bytes: Option<Arc<QueuedBytes>>,
    ) -> mpsc::Receiver<Batch> {
        let (tx, rx) = mpsc::channel(capacity);
        let mut consumers = self.consumers.write().unwrap_or_else(|e| e.into_inner());
        consumers.retain(|c| c.name != name);
        consumers.push(Consumer {
            name: name.to_string(),
            queue: tx,
            dropped,
            accepts,
            bytes,
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
        let mut behind = Vec::new();
        for c in self
            .consumers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if c.accepts.as_ref().is_some_and(|a| !a.contains(&type_name)) {
                continue;
            }
            if let Some(b) = &c.bytes {
                let size = n * EVENT_BYTES;
                let taken = b
                    .queued
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                        (q + size <= b.limit).then_some(q + size)
                    });
                if taken.is_err() {
                    b.behind.store(true, Ordering::Relaxed);
                    c.dropped.inc_by(n);
                    behind.push(c.name.clone());
                    continue;
                }
            }
            match c.queue.try_send(Arc::clone(&batch)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Some(b) = &c.bytes {
                        b.queued.fetch_sub(n * EVENT_BYTES, Ordering::Relaxed);
                    }
                    c.dropped.inc_by(n)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed || !behind.is_empty() {
            self.consumers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| !c.queue.is_closed() && !behind.contains(&c.name));
        }
    }
}
