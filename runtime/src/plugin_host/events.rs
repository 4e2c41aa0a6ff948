//! Host side of `sonde:plugin/events`: events a plugin derives go to the same consumers as
//! kernel events, with `source: plugin:<name>`. Capability `events`; at most
//! `spec.limits.eventsPerSecond` a second.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::bundle::PluginInfo;
use super::manifest::Capability;
use super::sonde::plugin::events::{Event as WitEvent, Host, Severity as WitSeverity, Value};
use super::Refusal as Error;
use super::{HostContext, HostState};
use crate::event::{Derived, Event, Kind, Severity, Source};
use crate::topology::Workload;

/// Keys of the event envelope, which a plugin's fields may not replace.
const RESERVED: &[&str] = &[
    "time",
    "node",
    "type",
    "severity",
    "namespace",
    "pod",
    "netns",
    "source",
    "message",
];
const MAX_FIELDS: usize = 64;
const MAX_TEXT: usize = 4096;
/// An event's text all together (message, field names and text values): what an event a
/// plugin emits may hold in the consumers' queues, each of which holds a bounded number.
const MAX_EVENT_TEXT: usize = 16 << 10;

pub struct EmitBudget {
    window: Instant,
    emitted: u32,
}

impl Default for EmitBudget {
    fn default() -> Self {
        EmitBudget {
            window: Instant::now(),
            emitted: 0,
        }
    }
}

fn to_json(v: Value) -> serde_json::Value {
    match v {
        Value::Text(s) => serde_json::Value::String(s),
        Value::Integer(i) => i.into(),
        Value::Number(f) => {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Boolean(b) => b.into(),
    }
}

/// Sends an event a plugin or script derived to the agent's consumers, within the plugin's
/// `spec.limits.eventsPerSecond` (counted in `budget`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish(
    host: &HostContext,
    info: &PluginInfo,
    budget: &mut EmitBudget,
    kind: String,
    severity: Severity,
    netns: Option<u32>,
    workload: Option<Workload>,
    message: Option<String>,
    fields: Vec<(String, serde_json::Value)>,
) -> Result<(), Error> {
    let limit = info.manifest.spec.limits.events_per_second;
    if budget.window.elapsed().as_secs() >= 1 {
        *budget = EmitBudget::default();
    }
    if budget.emitted >= limit {
        return Err(Error::Limit(format!(
            "more than {limit} events this second (spec.limits.eventsPerSecond)"
        )));
    }
    if kind.is_empty() || kind.len() > 64 {
        return Err(Error::Invalid(
            "event kind must be 1 to 64 characters".into(),
        ));
    }
    if fields.len() > MAX_FIELDS {
        return Err(Error::Invalid(format!("more than {MAX_FIELDS} fields")));
    }
    if let Some((k, _)) = fields
        .iter()
        .find(|(k, _)| RESERVED.contains(&k.as_str()) || k.is_empty())
    {
        return Err(Error::Invalid(format!(
            "field {k:?} is reserved for the event envelope"
        )));
    }
    if message.as_ref().is_some_and(|m| m.len() > MAX_TEXT)
        || fields
            .iter()
            .any(|(_, v)| matches!(v, serde_json::Value::String(s) if s.len() > MAX_TEXT))
    {
        return Err(Error::Invalid(format!("text longer than {MAX_TEXT} bytes")));
    }
    let text = kind.len()
        + message.as_ref().map_or(0, String::len)
        + fields
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum::<usize>();
    if text > MAX_EVENT_TEXT {
        return Err(Error::Invalid(format!(
            "an event of {text} bytes of text, over {} KiB",
            MAX_EVENT_TEXT >> 10
        )));
    }
    budget.emitted += 1;

    let ctx = &host.probes;
    let e = Event {
        time: SystemTime::now(),
        node: Arc::clone(&ctx.node),
        severity,
        netns: netns.unwrap_or(0),
        netns_cookie: 0,
        // The enrichment stage looks up the namespace's workload when the plugin names none.
        workload,
        peer: None,
        labels: None,
        source: Source::Plugin(Arc::clone(&info.source)),
        message,
        kind: Kind::Derived(Derived {
            type_name: kind,
            fields,
        }),
    };
    ctx.publish(vec![e]);
    host.self_metrics
        .emitted
        .with_label_values(&[&info.name])
        .inc();
    Ok(())
}

impl Host for HostState {
    fn emit(&mut self, event: WitEvent) -> Result<(), Error> {
        self.require(Capability::Events)?;
        let workload = event.workload.map(|w| Workload {
            namespace: Arc::from(w.namespace),
            pod: Arc::from(w.pod),
        });
        let severity = match event.severity {
            WitSeverity::Info => Severity::Info,
            WitSeverity::Warning => Severity::Warning,
            WitSeverity::Critical => Severity::Critical,
        };
        let fields = event
            .fields
            .into_iter()
            .map(|(k, v)| (k, to_json(v)))
            .collect();
        publish(
            &self.host,
            &self.plugin,
            &mut self.events,
            event.kind,
            severity,
            event.netns,
            workload,
            event.message,
            fields,
        )
    }
}
