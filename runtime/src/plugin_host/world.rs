//! Which `sonde:plugin` a component was built for, and calling what it exports.
//!
//! The host binds `sonde:plugin@0.2.x` (`wit/plugin.wit`, world `full`) and, for one release,
//! `sonde:plugin@0.1.0` (frozen in `wit/deps/sonde-plugin-0.1.0/`): a linker holds the host
//! interfaces of both, and a component is prepared as the version its imports and exports
//! name. A 0.2 component exports only the interfaces it implements; they are looked up one by
//! one ([`V2Pre`]) and checked against the manifest ([`Pre::check`]). A 0.1 component exports
//! every handler of its world; its typed batches are the 0.2 ones without `extra`.

use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Func, Instance, InstancePre, Lower,
};
use wasmtime::{Engine, Store};

use super::delivery::{Delivery, Probe};
use super::exports::sonde::plugin as x;
use super::manifest::{Capability, Delivery as DeliveryMode, Manifest};
use super::{sonde::plugin::types as wit, BundleError, HostState};

/// `sonde:plugin@0.1.0`, as plugins built before 0.2 were. Its host interfaces are 0.2's under
/// their old names (the types are the same but for the Rust names bindgen gives them, hence
/// the conversions below); its event records are 0.2's without `extra`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "sonde:plugin/plugin@0.1.0",
        path: "../wit/deps/sonde-plugin-0.1.0",
        exports: { default: async },
        imports: { default: trappable },
        trappable_error_type: {
            "sonde:plugin/types.error" => crate::plugin_host::Refusal,
        },
    });
}

use v0_1::sonde::plugin as old;

/// The 0.1 host interfaces: the 0.2 ones under their old names.
mod old_host {
    use super::old;
    use crate::plugin_host::sonde::plugin as now;
    use crate::plugin_host::{HostState, Refusal};

    pub fn workload(w: now::types::Workload) -> old::types::Workload {
        old::types::Workload {
            namespace: w.namespace,
            pod: w.pod,
        }
    }

    fn workload_back(w: old::types::Workload) -> now::types::Workload {
        now::types::Workload {
            namespace: w.namespace,
            pod: w.pod,
        }
    }

    pub fn ip(a: now::types::IpAddress) -> old::types::IpAddress {
        match a {
            now::types::IpAddress::Ipv4(v) => old::types::IpAddress::Ipv4(v),
            now::types::IpAddress::Ipv6(v) => old::types::IpAddress::Ipv6(v),
        }
    }

    impl old::types::Host for HostState {
        fn convert_error(&mut self, refusal: Refusal) -> wasmtime::Result<old::types::Error> {
            Ok(match now::types::Host::convert_error(self, refusal)? {
                now::types::Error::NotGranted(r) => old::types::Error::NotGranted(r),
                now::types::Error::Invalid(r) => old::types::Error::Invalid(r),
                now::types::Error::Limit(r) => old::types::Error::Limit(r),
            })
        }
    }

    impl old::log::Host for HostState {
        fn log(&mut self, level: old::log::Level, message: String) -> wasmtime::Result<()> {
            let level = match level {
                old::log::Level::Debug => now::log::Level::Debug,
                old::log::Level::Info => now::log::Level::Info,
                old::log::Level::Warn => now::log::Level::Warn,
                old::log::Level::Error => now::log::Level::Error,
            };
            now::log::Host::log(self, level, message)
        }
    }

    impl old::metrics::Host for HostState {
        fn register_counter(
            &mut self,
            name: String,
            help: String,
            label_names: Vec<String>,
        ) -> Result<u32, Refusal> {
            now::metrics::Host::register_counter(self, name, help, label_names)
        }
        fn register_gauge(
            &mut self,
            name: String,
            help: String,
            label_names: Vec<String>,
        ) -> Result<u32, Refusal> {
            now::metrics::Host::register_gauge(self, name, help, label_names)
        }
        fn register_histogram(
            &mut self,
            name: String,
            help: String,
            label_names: Vec<String>,
            buckets: Vec<f64>,
        ) -> Result<u32, Refusal> {
            now::metrics::Host::register_histogram(self, name, help, label_names, buckets)
        }
        fn with_labels(&mut self, metric: u32, label_values: Vec<String>) -> Result<u32, Refusal> {
            now::metrics::Host::with_labels(self, metric, label_values)
        }
        fn add(&mut self, series: u32, value: f64) -> Result<(), Refusal> {
            now::metrics::Host::add(self, series, value)
        }
        fn set(&mut self, series: u32, value: f64) -> Result<(), Refusal> {
            now::metrics::Host::set(self, series, value)
        }
        fn observe(&mut self, series: u32, value: f64) -> Result<(), Refusal> {
            now::metrics::Host::observe(self, series, value)
        }
    }

    impl old::events::Host for HostState {
        fn emit(&mut self, e: old::events::Event) -> Result<(), Refusal> {
            use now::events::{Severity, Value};
            let event = now::events::Event {
                kind: e.kind,
                severity: match e.severity {
                    old::events::Severity::Info => Severity::Info,
                    old::events::Severity::Warning => Severity::Warning,
                    old::events::Severity::Critical => Severity::Critical,
                },
                netns: e.netns,
                workload: e.workload.map(workload_back),
                message: e.message,
                fields: e
                    .fields
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            old::events::Value::Text(t) => Value::Text(t),
                            old::events::Value::Integer(i) => Value::Integer(i),
                            old::events::Value::Number(n) => Value::Number(n),
                            old::events::Value::Boolean(b) => Value::Boolean(b),
                        };
                        (k, v)
                    })
                    .collect(),
            };
            now::events::Host::emit(self, event)
        }
    }

    impl old::topology::Host for HostState {
        fn workload_of_netns(
            &mut self,
            netns: u32,
        ) -> Result<Option<old::types::Workload>, Refusal> {
            now::topology::Host::workload_of_netns(self, netns).map(|w| w.map(workload))
        }
        fn workload_of_ip(&mut self, ip: String) -> Result<Option<old::types::Workload>, Refusal> {
            now::topology::Host::workload_of_ip(self, ip).map(|w| w.map(workload))
        }
    }

    impl old::maps::Host for HostState {
        fn counters(&mut self, probe: String) -> Result<Vec<old::maps::Counter>, Refusal> {
            let counters = now::maps::Host::counters(self, probe)?;
            Ok(counters
                .into_iter()
                .map(|c| old::maps::Counter {
                    netns: c.netns,
                    workload: c.workload.map(workload),
                    key: c.key,
                    value: c.value,
                })
                .collect())
        }
        fn flows(&mut self) -> Result<Vec<old::maps::FlowRow>, Refusal> {
            let rows = now::maps::Host::flows(self)?;
            Ok(rows
                .into_iter()
                .map(|r| old::maps::FlowRow {
                    src: r.src.map(workload),
                    dst: r.dst.map(workload),
                    src_type: r.src_type,
                    dst_type: r.dst_type,
                    protocol: r.protocol,
                    saddr: r.saddr.map(ip),
                    sport: r.sport,
                    daddr: r.daddr.map(ip),
                    dport: r.dport,
                    packets: r.packets,
                    bytes: r.bytes,
                    last_ns: r.last_ns,
                    srtt_ns: r.srtt_ns,
                })
                .collect())
        }
    }

    impl old::control::Host for HostState {
        fn set_event_rate(
            &mut self,
            probe: String,
            rate_per_cpu: u64,
            duration_ms: u64,
        ) -> Result<(), Refusal> {
            now::control::Host::set_event_rate(self, probe, rate_per_cpu, duration_ms)
        }
    }
}

/// The versions of `sonde:plugin` this agent hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V0_1,
    /// 0.2.x: the patch it was built for.
    V0_2(u32),
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::V0_1 => f.write_str("0.1.0"),
            Version::V0_2(patch) => write!(f, "0.2.{patch}"),
        }
    }
}

/// A component checked against the world it was built for, ready to instantiate.
pub enum Pre {
    V0_1(Box<v0_1::PluginPre<HostState>>),
    V0_2(Box<V2Pre>),
}

/// The interfaces a 0.2 component exports, found by name (a later 0.2.x's names match).
pub struct V2Pre {
    pre: InstancePre<HostState>,
    /// The 0.2.x it was built for.
    patch: u32,
    init: Option<x::init::GuestIndices>,
    tick: Option<x::tick::GuestIndices>,
    enrich: Option<x::enrich::GuestIndices>,
    /// The `handle` function of each probe's handler interface, by [`Probe::index`]: found
    /// by the names the catalogue gives them, so that a probe added to the catalogue needs
    /// nothing here.
    handlers: Vec<Option<ComponentExportIndex>>,
    packed: Option<ComponentExportIndex>,
}

/// The `handle` function of an exported interface.
fn handle_index(pre: &InstancePre<HostState>, interface: &str) -> Option<ComponentExportIndex> {
    let component = pre.component();
    let instance = component.get_export_index(None, export_name(interface))?;
    component.get_export_index(Some(&instance), "handle")
}

impl V2Pre {
    fn new(pre: InstancePre<HostState>, patch: u32) -> V2Pre {
        V2Pre {
            patch,
            init: x::init::GuestIndices::new(&pre).ok(),
            tick: x::tick::GuestIndices::new(&pre).ok(),
            enrich: x::enrich::GuestIndices::new(&pre).ok(),
            handlers: Probe::ALL
                .iter()
                .map(|p| handle_index(&pre, p.interface()))
                .collect(),
            packed: handle_index(&pre, "packed-handler"),
            pre,
        }
    }

    /// Whether the component exports `probe`'s typed handler.
    fn handles(&self, probe: Probe) -> bool {
        self.handlers[probe.index()].is_some()
    }
}

/// The name of a 0.2 interface, as a plugin's world exports it.
fn export_name(interface: &str) -> String {
    format!("sonde:plugin/{interface}@{}", super::wit_version())
}

impl Pre {
    pub fn version(&self) -> Version {
        match self {
            Pre::V0_1(_) => Version::V0_1,
            Pre::V0_2(pre) => Version::V0_2(pre.patch),
        }
    }

    /// Refuses a component that lacks an export its manifest relies on: the handler of a
    /// probe it subscribes to (or `packed-handler` for the packed delivery), `enrich` when it
    /// asks for the capability, `init` when it has a config. A 0.1 component has them all,
    /// for the probes 0.1.0 knew.
    pub fn check(&self, manifest: &Manifest) -> Result<(), BundleError> {
        let Pre::V0_2(pre) = self else {
            let spec = &manifest.spec;
            return match spec.subscribe.iter().find(|p| {
                spec.delivery != DeliveryMode::Packed && !V0_1_PROBES.contains(&p.as_str())
            }) {
                Some(probe) => Err(BundleError::World(format!(
                    "spec.subscribe has {probe}, which sonde:plugin@0.1.0 has no handler for \
                     (rebuild the plugin against @{})",
                    super::wit_version()
                ))),
                None => Ok(()),
            };
        };
        let missing = |interface: &str, why: String| {
            Err(BundleError::World(format!(
                "{why}, but the component does not export {name} (add `export {name};` to its world)",
                name = export_name(interface)
            )))
        };
        let spec = &manifest.spec;
        if spec.delivery == DeliveryMode::Packed {
            if pre.packed.is_none() {
                return missing("packed-handler", "spec.delivery is packed".to_string());
            }
        } else if let Some(probe) = Probe::ALL
            .iter()
            .find(|p| spec.subscribe.iter().any(|s| s == p.name()) && !pre.handles(**p))
        {
            return missing(
                probe.interface(),
                format!("spec.subscribe has {}", probe.name()),
            );
        }
        if manifest.grants(Capability::Enrich) && pre.enrich.is_none() {
            return missing("enrich", "spec.capabilities has enrich".to_string());
        }
        if spec.config.is_some() && pre.init.is_none() {
            return missing("init", "spec.config is set".to_string());
        }
        Ok(())
    }

    /// A fresh instance and its exports.
    pub async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Exports> {
        match self {
            Pre::V0_1(pre) => Ok(Exports::V0_1(Box::new(pre.instantiate_async(store).await?))),
            Pre::V0_2(pre) => {
                let instance = pre.pre.instantiate_async(&mut *store).await?;
                Ok(Exports::V0_2(Box::new(V2Exports::load(
                    pre, store, &instance,
                )?)))
            }
        }
    }
}

/// What an instance exports, ready to call.
pub enum Exports {
    V0_1(Box<v0_1::Plugin>),
    V0_2(Box<V2Exports>),
}

pub struct V2Exports {
    init: Option<x::init::Guest>,
    tick: Option<x::tick::Guest>,
    enrich: Option<x::enrich::Guest>,
    /// Each probe's `handle`, by [`Probe::index`].
    handlers: Vec<Option<Func>>,
    packed: Option<Func>,
}

impl V2Exports {
    /// Each export the component has, type-checked against this host's WIT.
    fn load(
        pre: &V2Pre,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<V2Exports> {
        macro_rules! load {
            ($field:ident) => {
                match &pre.$field {
                    Some(i) => Some(i.load(&mut *store, instance)?),
                    None => None,
                }
            };
        }
        let mut func = |index: &Option<ComponentExportIndex>| {
            index.as_ref().map(|i| {
                instance
                    .get_func(&mut *store, i)
                    .ok_or_else(|| wasmtime::format_err!("an exported handle is not a function"))
            })
        };
        let handlers = pre
            .handlers
            .iter()
            .map(|i| func(i).transpose())
            .collect::<wasmtime::Result<Vec<_>>>()?;
        let packed = func(&pre.packed).transpose()?;
        for (probe, f) in Probe::ALL.iter().zip(&handlers) {
            if let Some(f) = f {
                Delivery::check_handler(*probe, f, store)
                    .map_err(|e| e.context(format!("{}.handle", probe.interface())))?;
            }
        }
        if let Some(f) = &packed {
            f.typed::<(&wit::PackedBatch,), ()>(&*store)
                .map_err(|e| e.context("packed-handler.handle"))?;
        }
        Ok(V2Exports {
            init: load!(init),
            tick: load!(tick),
            enrich: load!(enrich),
            handlers,
            packed,
        })
    }
}

/// Calls an exported `handle` with one batch; nothing when the component lacks it. `func`
/// must be the export [`V2Exports::load`] checked to take a `B` (as `Delivery::call` passes
/// each batch to the handler of its own probe): the type is not checked again at every batch,
/// as wasmtime's bindgen does not either.
pub async fn call_handle<B>(
    func: Option<&Func>,
    store: &mut Store<HostState>,
    batch: &B,
) -> wasmtime::Result<()>
where
    B: ComponentType + Lower + Sync,
{
    let Some(func) = func else {
        return Ok(());
    };
    // SAFETY: `load` type-checked this export against `(&B,) -> ()` (`check_handler` for a
    // probe's handler, the packed batch for `packed-handler`), and an instance's exports do
    // not change.
    let typed = unsafe { wasmtime::component::TypedFunc::<(&B,), ()>::new_unchecked(*func) };
    typed.call_async(&mut *store, (batch,)).await
}

impl Exports {
    /// `init` with the manifest's config (nothing to call when a 0.2 component has none).
    pub async fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Exports::V0_1(p) => p.call_init(store, config).await,
            Exports::V0_2(e) => match &e.init {
                Some(g) => g.call_init(store, config).await,
                None => Ok(Ok(())),
            },
        }
    }

    pub async fn tick(&self, store: &mut Store<HostState>, now_ns: u64) -> wasmtime::Result<()> {
        match self {
            Exports::V0_1(p) => p.call_tick(store, now_ns).await,
            Exports::V0_2(e) => match &e.tick {
                Some(g) => g.call_tick(store, now_ns).await,
                None => Ok(()),
            },
        }
    }

    pub async fn workload_labels(
        &self,
        store: &mut Store<HostState>,
        workload: &wit::Workload,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        match self {
            Exports::V0_1(p) => {
                let w = old_host::workload(workload.clone());
                p.call_workload_labels(store, &w).await
            }
            Exports::V0_2(e) => match &e.enrich {
                Some(g) => g.call_workload_labels(store, workload).await,
                None => Ok(Vec::new()),
            },
        }
    }

    /// Hands one batch to the export that takes it. A 0.2 component without it (which
    /// [`Pre::check`] refuses) is skipped.
    pub async fn deliver(
        &self,
        store: &mut Store<HostState>,
        batch: Delivery,
    ) -> wasmtime::Result<()> {
        match self {
            Exports::V0_1(p) => deliver_v0_1(p, store, batch).await,
            Exports::V0_2(e) => batch.call(&e.handlers, e.packed.as_ref(), store).await,
        }
    }
}

/// A 0.2 typed batch as 0.1 takes it: the same records without `extra` (which 0.2.0 leaves
/// empty).
async fn deliver_v0_1(
    p: &v0_1::Plugin,
    store: &mut Store<HostState>,
    batch: Delivery,
) -> wasmtime::Result<()> {
    use old::types as o;
    let workload_ref = |w: wit::WorkloadRef| o::WorkloadRef {
        namespace: w.namespace,
        pod: w.pod,
    };
    let envelope = |e: wit::Envelope| o::Envelope {
        time_ns: e.time_ns,
        netns: e.netns,
        workload: e.workload.map(workload_ref),
    };
    let flow = |f: wit::Flow| o::Flow {
        protocol: f.protocol,
        saddr: f.saddr.map(old_host::ip),
        sport: f.sport,
        daddr: f.daddr.map(old_host::ip),
        dport: f.dport,
        peer: f.peer.map(workload_ref),
    };
    let symbols = |s: wit::Symbols| o::Symbols {
        strings: s.strings,
        stacks: s.stacks,
    };
    match batch {
        Delivery::PacketDrop(b) => {
            let events = b.events.into_iter().map(|e| o::PacketDrop {
                envelope: envelope(e.envelope),
                flow: flow(e.flow),
                reason: e.reason,
                location: e.location,
                stack: e.stack,
            });
            let b = o::PacketDropBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_packet_drop(store, &b).await
        }
        Delivery::TcpRetrans(b) => {
            let events = b.events.into_iter().map(|e| o::TcpRetrans {
                envelope: envelope(e.envelope),
                flow: flow(e.flow),
                state: e.state,
            });
            let b = o::TcpRetransBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_tcp_retrans(store, &b).await
        }
        Delivery::TcpReset(b) => {
            let events = b.events.into_iter().map(|e| o::TcpReset {
                envelope: envelope(e.envelope),
                flow: flow(e.flow),
                direction: e.direction,
                state: e.state,
            });
            let b = o::TcpResetBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_tcp_reset(store, &b).await
        }
        Delivery::TcpConnect(b) => {
            let events = b.events.into_iter().map(|e| o::TcpConnect {
                envelope: envelope(e.envelope),
                flow: flow(e.flow),
                side: e.side,
                cause: e.cause,
                duration_ns: e.duration_ns,
                retransmits: e.retransmits,
                error: e.error,
            });
            let b = o::TcpConnectBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_tcp_connect(store, &b).await
        }
        Delivery::Softirq(b) => {
            let events = b.events.into_iter().map(|e| o::Softirq {
                envelope: envelope(e.envelope),
                vec: e.vec,
                stage: e.stage,
                duration_ns: e.duration_ns,
                cpu: e.cpu,
            });
            let b = o::SoftirqBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_softirq(store, &b).await
        }
        Delivery::NetdevLatency(b) => {
            let events = b.events.into_iter().map(|e| o::NetdevLatency {
                envelope: envelope(e.envelope),
                interface: e.interface,
                ifindex: e.ifindex,
                stage: e.stage,
                duration_ns: e.duration_ns,
                bytes: e.bytes,
            });
            let b = o::NetdevLatencyBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_netdev_latency(store, &b).await
        }
        Delivery::IoLatency(b) => {
            let events = b.events.into_iter().map(|e| o::IoLatency {
                envelope: envelope(e.envelope),
                device: e.device,
                dev: e.dev,
                op: e.op,
                duration_ns: e.duration_ns,
                bytes: e.bytes,
                sector: e.sector,
                error: e.error,
            });
            let b = o::IoLatencyBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_io_latency(store, &b).await
        }
        Delivery::Dns(b) => {
            let events = b.events.into_iter().map(|e| o::Dns {
                envelope: envelope(e.envelope),
                flow: flow(e.flow),
                outcome: e.outcome,
                id: e.id,
                duration_ns: e.duration_ns,
                count: e.count,
                rate: e.rate,
            });
            let b = o::DnsBatch {
                node: b.node,
                symbols: symbols(b.symbols),
                events: events.collect(),
            };
            p.call_on_dns(store, &b).await
        }
        Delivery::Packed(b) => {
            let b = o::PackedBatch {
                probe: b.probe,
                node: b.node,
                symbols: symbols(b.symbols),
                record_size: b.record_size,
                count: b.count,
                events: b.events,
            };
            p.call_on_packed(store, &b).await
        }
        // A probe added after 0.1.0, which `Pre::check` refuses typed subscriptions to (the
        // arm is unreachable while the catalogue has only 0.1.0's probes).
        #[allow(unreachable_patterns)]
        _ => Ok(()),
    }
}

/// The probes `sonde:plugin@0.1.0` has typed handlers for.
const V0_1_PROBES: &[&str] = &[
    "packet_drop",
    "tcp_retrans",
    "tcp_reset",
    "tcp_connect",
    "softirq",
    "netdev_latency",
    "io_latency",
    "dns",
];

/// Which `sonde:plugin` a component was built for, by what it says: the versions in the names
/// of the `sonde:plugin` interfaces it imports and exports (a component built against the WIT
/// always names some: the types its handlers take come from `sonde:plugin/types`). Any 0.2.x
/// is this host's 0.2 (later minors only add); 0.1.0 is the previous one.
pub fn version_of(component: &Component, engine: &Engine) -> Result<Version, BundleError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()))
        .collect();
    let host = super::wit_version();
    let mut versions: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("sonde:plugin/"))
        .map(|n| n.split_once('@').map_or("(no version)", |(_, v)| v))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let hosted = format!("this agent hosts @{host} and @0.1.0");
    let of = |v: &str| {
        if v == "0.1.0" {
            Some(Version::V0_1)
        } else if host.starts_with("0.2.") {
            v.strip_prefix("0.2.")
                .and_then(|patch| patch.parse().ok())
                .map(Version::V0_2)
        } else {
            None
        }
    };
    match versions.as_slice() {
        [] => Err(BundleError::World(format!(
            "not built for sonde:plugin: it imports and exports no sonde:plugin interface \
             ({hosted}); does not fit the sonde:plugin world"
        ))),
        [one] => of(one)
            .ok_or_else(|| BundleError::World(format!("built for sonde:plugin@{one}; {hosted}"))),
        several => Err(BundleError::World(format!(
            "built for several versions of sonde:plugin at once ({}); {hosted}",
            several
                .iter()
                .map(|v| format!("@{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Prepares a component as the version it was built for.
pub fn prepare(pre: InstancePre<HostState>, version: Version) -> Result<Pre, BundleError> {
    match version {
        Version::V0_1 => v0_1::PluginPre::new(pre)
            .map(|pre| Pre::V0_1(Box::new(pre)))
            .map_err(|e| BundleError::World(super::one_line(&e))),
        Version::V0_2(patch) => Ok(Pre::V0_2(Box::new(V2Pre::new(pre, patch)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_host::manifest::Capability;

    const WIT: &str = include_str!("../../../wit/plugin.wit");
    const WIT_README: &str = include_str!("../../../wit/README.md");
    const README: &str = include_str!("../../../README.md");

    /// The names a world of wit/plugin.wit imports or exports (`verb` is `import` or `export`).
    fn world(name: &str, verb: &str) -> Vec<String> {
        let start = WIT
            .find(&format!("\nworld {name} {{"))
            .unwrap_or_else(|| panic!("no world {name}"));
        let body = &WIT[start..start + WIT[start..].find("\n}").unwrap()];
        let mut names: Vec<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{verb} ")))
            .map(|n| n.trim_end_matches(';').to_string())
            .collect();
        names.sort();
        names
    }

    /// Every interface a plugin may export is bound by the host (each probe's handler, and
    /// the others by name in `V2Pre`) and listed in wit/README.md's table; every host
    /// interface is in its capability table.
    #[test]
    fn the_worlds_interfaces_are_the_hosts_and_the_docs() {
        let mut bound: Vec<String> = Probe::ALL
            .iter()
            .map(|p| p.interface().to_string())
            .chain(["init", "tick", "enrich", "packed-handler"].map(String::from))
            .collect();
        bound.sort();
        assert_eq!(world("full", "export"), bound);
        for name in &bound {
            assert!(
                WIT_README.contains(&format!("| `{name}` |")),
                "wit/README.md does not list the export {name}"
            );
        }
        let imports = world("plugin", "import");
        assert_eq!(imports.len(), 6, "{imports:?}");
        for name in &imports {
            assert!(
                WIT_README.contains(&format!("| `{name}` |")),
                "wit/README.md does not list the import {name}"
            );
        }
    }

    /// The README's manifest example lists every capability, and its `kind` list every kind
    /// of `sonde_plugin_errors_total`.
    #[test]
    fn the_readmes_capabilities_and_error_kinds_are_the_codes() {
        let all: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
        let line = format!("# of {}", all.join(", "));
        assert!(README.contains(&line), "README.md lacks `{line}`");
        let start = README
            .find("`sonde_plugin_errors_total{plugin,kind}` (kind: ")
            .expect("README.md lists the error kinds");
        let text = &README[start..start + 600];
        let refused = [
            BundleError::Manifest(String::new()),
            BundleError::Module(crate::plugin_host::ModuleError::NotWasm),
            BundleError::Checksum(String::new()),
            BundleError::World(String::new()),
            BundleError::Init(String::new()),
        ];
        let kinds = refused
            .iter()
            .map(|e| e.kind())
            .chain(super::super::worker::RUNTIME_ERROR_KINDS);
        for kind in kinds {
            assert!(text.contains(kind), "README.md's kinds lack {kind}: {text}");
        }
    }
}
