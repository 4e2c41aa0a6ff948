//! Events the plugin derives (capability `events`): they reach the same sinks as kernel
//! events, with `source: plugin:<name>`, `type` = the event's kind, and its fields.

use crate::bindings::sonde::plugin::events as wit;
use crate::{Result, Workload};

pub use wit::{Event as EventRecord, Severity, Value};

/// An event to emit, built field by field:
///
/// ```no_run
/// use sonde_plugin::{Event, Severity};
///
/// Event::new("retrans_storm")
///     .severity(Severity::Warning)
///     .netns(4026532577)
///     .message("250 retransmits in 10 s")
///     .field("retransmits", 250)
///     .emit()?;
/// # Ok::<(), sonde_plugin::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    record: EventRecord,
}

impl Event {
    /// An event of type `kind`, severity info, with no fields.
    pub fn new(kind: impl Into<String>) -> Self {
        Event {
            record: EventRecord {
                kind: kind.into(),
                severity: Severity::Info,
                netns: None,
                workload: None,
                message: None,
                fields: Vec::new(),
            },
        }
    }

    pub fn severity(mut self, severity: Severity) -> Self {
        self.record.severity = severity;
        self
    }

    /// The network namespace the event concerns; the host fills in its workload unless
    /// [`workload`](Event::workload) is given.
    pub fn netns(mut self, netns: u32) -> Self {
        self.record.netns = Some(netns);
        self
    }

    /// The workload the event concerns (its `namespace` and `pod`).
    pub fn workload(mut self, workload: impl Into<Option<Workload>>) -> Self {
        self.record.workload = workload.into();
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.record.message = Some(message.into());
        self
    }

    /// Adds the field `key` to the JSON event. Integers, floats, booleans and strings convert
    /// into a [`Value`].
    pub fn field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.record.fields.push((key.into(), value.into()));
        self
    }

    /// The value of the field `key`, if it was added.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.record
            .fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The record as the host receives it.
    pub fn record(&self) -> &EventRecord {
        &self.record
    }

    /// Sends the event to the agent's sinks.
    pub fn emit(&self) -> Result<()> {
        emit(self)
    }
}

/// Sends `event` to the agent's sinks. The host counts events against the plugin's
/// `limits.eventsPerSecond` and answers [`Error::Limit`](crate::Error::Limit) past it.
pub fn emit(event: &Event) -> Result<()> {
    Ok(wit::emit(&event.record)?)
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Number(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Number(v.into())
    }
}

macro_rules! integer_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Integer(v.into())
            }
        }
    )*};
}

integer_from!(i8, i16, i32, i64, u8, u16, u32);

macro_rules! saturating_from {
    ($($t:ty),*) => {$(
        /// Saturates at `i64::MAX`.
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
    )*};
}

saturating_from!(u64, usize, isize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_the_record() {
        let w = Workload {
            namespace: "shop".into(),
            pod: "web-1".into(),
        };
        let e = Event::new("retrans_storm")
            .severity(Severity::Warning)
            .netns(7)
            .workload(w.clone())
            .message("storm")
            .field("retransmits", 120u64)
            .field("window_seconds", 10)
            .field("rate", 12.5)
            .field("active", true)
            .field("reason", "NO_SOCKET");
        let r = e.record();
        assert_eq!(r.kind, "retrans_storm");
        assert_eq!(r.severity, Severity::Warning);
        assert_eq!(r.netns, Some(7));
        assert_eq!(r.workload, Some(w));
        assert_eq!(r.message.as_deref(), Some("storm"));
        assert_eq!(e.get("retransmits"), Some(&Value::Integer(120)));
        assert_eq!(e.get("window_seconds"), Some(&Value::Integer(10)));
        assert_eq!(e.get("rate"), Some(&Value::Number(12.5)));
        assert_eq!(e.get("active"), Some(&Value::Boolean(true)));
        assert_eq!(e.get("reason"), Some(&Value::Text("NO_SOCKET".into())));
        assert_eq!(e.get("missing"), None);
        assert_eq!(Value::from(u64::MAX), Value::Integer(i64::MAX));
        assert_eq!(Event::new("x").workload(None).record().workload, None);
    }
}
