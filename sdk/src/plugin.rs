//! The plugin author's side of the world's exports: the [`Plugin`] trait, the [`Config`]
//! handed to `init`, and the glue [`export!`](crate::export) expands to.

use serde::de::DeserializeOwned;

use crate::{
    Dns, IoLatency, NetdevLatency, PacketDrop, Softirq, TcpConnect, TcpReset, TcpRetrans, TcpState,
    Workload,
};

/// A plugin. Implement [`init`](Plugin::init) and the callbacks of the probes the manifest
/// subscribes to; the others default to doing nothing. Export the type with
/// [`export!`](crate::export).
///
/// Every callback runs under the manifest's `limits.callTimeout`: a plugin that panics or
/// runs out of time is restarted from a fresh instance (and `init` is called again).
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from the manifest's `spec.config`. An error refuses the bundle; its
    /// text is the reason the agent reports, so name the config field.
    fn init(config: Config) -> Result<Self, String>;

    /// A batch of `packet_drop` events. The events borrow from the batch: copy what you keep.
    fn on_packet_drop(&mut self, batch: &[PacketDrop<'_>]) {
        let _ = batch;
    }

    /// A batch of `tcp_retrans` events.
    fn on_tcp_retrans(&mut self, batch: &[TcpRetrans<'_>]) {
        let _ = batch;
    }

    /// A batch of `tcp_reset` events.
    fn on_tcp_reset(&mut self, batch: &[TcpReset<'_>]) {
        let _ = batch;
    }

    /// A batch of `tcp_connect` events: handshakes that were slow or failed.
    fn on_tcp_connect(&mut self, batch: &[TcpConnect<'_>]) {
        let _ = batch;
    }

    /// A batch of `softirq` events: NET_RX or NET_TX softirqs over the probe's thresholds.
    fn on_softirq(&mut self, batch: &[Softirq<'_>]) {
        let _ = batch;
    }

    /// A batch of `netdev_latency` events: packets slow in an interface's qdisc or driver.
    fn on_netdev_latency(&mut self, batch: &[NetdevLatency<'_>]) {
        let _ = batch;
    }

    /// A batch of `io_latency` events: block requests over the probe's `slowThreshold`.
    fn on_io_latency(&mut self, batch: &[IoLatency<'_>]) {
        let _ = batch;
    }

    /// A batch of `dns` events: queries that timed out, pods with SERVFAIL or NXDOMAIN
    /// responses above the probe's rate.
    fn on_dns(&mut self, batch: &[Dns<'_>]) {
        let _ = batch;
    }

    /// A batch of `tcp_state` events: TCP connections that closed.
    fn on_tcp_state(&mut self, batch: &[TcpState<'_>]) {
        let _ = batch;
    }

    /// Called every second with the time in nanoseconds since the Unix epoch.
    fn tick(&mut self, now_ns: u64) {
        let _ = now_ns;
    }

    /// Labels for `workload`, added to each of its events as the field `labels` (capability
    /// `enrich`). Asked once per workload; the answer is kept until the plugin is reloaded.
    fn workload_labels(&mut self, workload: &Workload) -> Vec<(String, String)> {
        let _ = workload;
        Vec::new()
    }
}

/// The manifest's `spec.config` as JSON (`{}` when the manifest has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    json: String,
}

impl Config {
    /// A config from its JSON text, as the host passes it (also handy in tests).
    pub fn new(json: impl Into<String>) -> Self {
        Config { json: json.into() }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// Deserializes the config into `T`. The error reads `config: <serde's message>`, which
    /// names the field (use `#[serde(deny_unknown_fields)]` to catch misspelt keys).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("config: {e}"))
    }

    /// The config as a JSON value.
    pub fn value(&self) -> Result<serde_json::Value, String> {
        self.parse()
    }
}

/// What [`export!`](crate::export) expands to calls: one instance per component, in a
/// thread-local cell.
#[doc(hidden)]
pub mod glue {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use super::{Config, Plugin};
    use crate::bindings::sonde::plugin::types::PackedBatch;
    use crate::event;

    pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

    pub fn init<P: Plugin>(slot: &'static Slot<P>, config: String) -> Result<(), String> {
        let plugin = P::init(Config::new(config))?;
        // Drop the previous instance outside the borrow, in case its Drop calls back in.
        let previous = slot.with(|cell| cell.borrow_mut().replace(plugin));
        drop(previous);
        Ok(())
    }

    /// A packed batch, decoded into the same events the typed handlers get.
    pub fn packed<P: Plugin>(plugin: &mut P, batch: &PackedBatch) {
        match batch.probe.as_str() {
            "packet_drop" => plugin.on_packet_drop(&event::packed_packet_drops(batch)),
            "tcp_retrans" => plugin.on_tcp_retrans(&event::packed_tcp_retransmits(batch)),
            "tcp_reset" => plugin.on_tcp_reset(&event::packed_tcp_resets(batch)),
            "tcp_connect" => plugin.on_tcp_connect(&event::packed_tcp_connects(batch)),
            "softirq" => plugin.on_softirq(&event::packed_softirqs(batch)),
            "netdev_latency" => plugin.on_netdev_latency(&event::packed_netdev_latencies(batch)),
            "io_latency" => plugin.on_io_latency(&event::packed_io_latencies(batch)),
            "dns" => plugin.on_dns(&event::packed_dns(batch)),
            "tcp_state" => plugin.on_tcp_state(&event::packed_tcp_states(batch)),
            // A probe newer than this SDK: its plugin cannot have subscribed knowingly.
            _ => {}
        }
    }

    /// Runs `f` on the instance, or returns `default` before a successful `init`.
    pub fn with<P: Plugin, R>(
        slot: &'static Slot<P>,
        default: R,
        f: impl FnOnce(&mut P) -> R,
    ) -> R {
        slot.with(|cell| match cell.borrow_mut().as_mut() {
            Some(plugin) => f(plugin),
            None => default,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Settings {
        #[serde(default)]
        window_seconds: u64,
    }

    #[test]
    fn config_parses_and_names_bad_fields() {
        let c = Config::new(r#"{"windowSeconds": 5}"#);
        assert_eq!(c.parse::<Settings>(), Ok(Settings { window_seconds: 5 }));
        assert_eq!(
            Config::new("{}").parse::<Settings>(),
            Ok(Settings { window_seconds: 0 })
        );
        let e = Config::new(r#"{"windowSecond": 5}"#)
            .parse::<Settings>()
            .unwrap_err();
        assert!(e.starts_with("config: unknown field `windowSecond`"), "{e}");
        assert_eq!(c.value().unwrap()["windowSeconds"], 5);
    }

    struct Ticks(Vec<u64>);

    impl Plugin for Ticks {
        fn init(config: Config) -> Result<Self, String> {
            if config.as_str() == "bad" {
                return Err("config: bad".into());
            }
            Ok(Ticks(Vec::new()))
        }
        fn tick(&mut self, now_ns: u64) {
            self.0.push(now_ns);
        }
    }

    thread_local! {
        static SLOT: RefCell<Option<Ticks>> = const { RefCell::new(None) };
    }

    #[test]
    fn glue_keeps_one_instance_and_ignores_calls_before_init() {
        let seen = |slot| glue::with(slot, Vec::new(), |p: &mut Ticks| p.0.clone());
        glue::with(&SLOT, (), |p| p.tick(1));
        assert_eq!(seen(&SLOT), Vec::<u64>::new());
        assert_eq!(glue::init(&SLOT, "bad".into()), Err("config: bad".into()));
        glue::init(&SLOT, "{}".into()).unwrap();
        glue::with(&SLOT, (), |p| p.tick(2));
        glue::with(&SLOT, (), |p| Plugin::tick(p, 3));
        assert_eq!(seen(&SLOT), vec![2, 3]);
        assert!(
            glue::with(&SLOT, vec![("x".to_string(), "y".to_string())], |p| {
                p.workload_labels(&Workload {
                    namespace: "a".into(),
                    pod: "b".into(),
                })
            })
            .is_empty()
        );
        // A new init replaces the instance.
        glue::init(&SLOT, "{}".into()).unwrap();
        assert_eq!(seen(&SLOT), Vec::<u64>::new());
    }
}
