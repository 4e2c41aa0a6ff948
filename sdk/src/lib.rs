//! The guest SDK for Sonde plugins written in Rust.
//!
//! A Sonde plugin is a WebAssembly component for `sonde:plugin@0.2.1` (the WIT in the
//! repository's `wit/`): the agent hands it the probes' events in batches, already
//! labelled with the workload they concern, and the plugin derives metrics, events and
//! workload labels through the host interfaces its manifest grants. This crate has three
//! layers:
//!
//! - [`bindings`]: the raw code `wit-bindgen` generates for the world;
//! - thin safe wrappers, one module per host interface: [`metrics`] ([`Counter`], [`Gauge`],
//!   [`Histogram`] and their [`Series`]), [`events`] (the [`Event`] builder), [`log`] (and the
//!   [`debug!`], [`info!`], [`warn!`], [`error!`] macros), [`topology`], [`maps`], [`control`],
//!   all returning [`Error`] when the host refuses a call;
//! - the [`Plugin`] trait, whose callbacks default to no-ops, and the [`export!`] macro that
//!   makes a type implementing it the component's exports.
//!
//! # Example
//!
//! ```no_run
#![doc = include_str!("../examples/resets.rs")]
//! ```
//!
//! This is `examples/resets.rs`. A plugin crate is a `cdylib` built for `wasm32-wasip2`
//! (`cargo build --release --target wasm32-wasip2`): the `.wasm` file cargo writes is the
//! component a bundle's `spec.module` names. In this repository, `cargo xtask plugins`
//! builds every plugin under `plugins/` into a bundle.
//!
//! Host calls only work inside the agent: on other targets the generated imports panic, so
//! keep a plugin's logic in plain Rust that its unit tests can call on the build machine.

pub mod control;
mod error;
mod event;
pub mod events;
pub mod log;
pub mod maps;
pub mod metrics;
mod plugin;
pub mod topology;

/// The code `wit-bindgen` generates for the world `full` (every export a plugin may have):
/// the host's imports under `sonde::plugin`, one `Guest` trait per exported interface under
/// `exports::sonde::plugin`, and the export macro [`export!`](crate::export) builds on.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "full",
        path: "../wit/plugin.wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "::sonde_plugin::bindings",
        additional_type_attributes: {
            "sonde:plugin/types@0.2.1/workload": [#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]],
            "sonde:plugin/types@0.2.1/error": [#[derive(PartialEq, Eq)]],
            "sonde:plugin/events@0.2.1/value": [#[derive(PartialEq)]],
            "sonde:plugin/events@0.2.1/event": [#[derive(PartialEq)]],
            "sonde:plugin/maps@0.2.1/counter": [#[derive(PartialEq, Eq)]],
        },
    });
}

pub use bindings::sonde::plugin::types::Workload;
pub use error::{Error, Result};
/// The packed layout and WIT fields this SDK decodes, for the tests that compare it with the
/// agent's.
#[doc(hidden)]
pub use event::{probes as schema_probes, schema, Field};
pub use event::{
    Dns, Envelope, Flow, IoLatency, NetdevLatency, OwnedFlow, PacketDrop, Softirq, Stack,
    TcpConnect, TcpReset, TcpRetrans, TcpState, WorkloadRef,
};
pub use events::{Event, Severity, Value};
pub use metrics::{Counter, Gauge, Histogram, Series};
pub use plugin::{Config, Plugin};

#[doc(hidden)]
pub use plugin::glue as __glue;
#[doc(hidden)]
pub mod __event {
    pub use crate::event::{
        dns, io_latencies, netdev_latencies, packet_drops, softirqs, tcp_connects, tcp_resets,
        tcp_retransmits, tcp_states,
    };
    // The packed decoders, for tests (the SDK's packed handler calls them itself).
    pub use crate::event::{
        packed_dns, packed_io_latencies, packed_netdev_latencies, packed_packet_drops,
        packed_softirqs, packed_tcp_connects, packed_tcp_resets, packed_tcp_retransmits,
        packed_tcp_states,
    };
}

/// Makes `$plugin`, a type implementing [`Plugin`], the component's exports.
///
/// Use it once, in the plugin crate's `lib.rs`. The instance [`Plugin::init`] returns lives
/// in a thread-local cell (a component instance has one thread) until the next `init`; calls
/// that arrive before a successful `init` are ignored.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct Exports;

            impl $crate::bindings::exports::sonde::plugin::init::Guest for Exports {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__glue::init(&PLUGIN, config)
                }
            }

            impl $crate::bindings::exports::sonde::plugin::tick::Guest for Exports {
                fn tick(now_ns: u64) {
                    $crate::__glue::with(&PLUGIN, (), |p| $crate::Plugin::tick(p, now_ns))
                }
            }

            impl $crate::bindings::exports::sonde::plugin::enrich::Guest for Exports {
                fn workload_labels(
                    workload: $crate::Workload,
                ) -> ::std::vec::Vec<(::std::string::String, ::std::string::String)> {
                    $crate::__glue::with(&PLUGIN, ::std::vec::Vec::new(), |p| {
                        $crate::Plugin::workload_labels(p, &workload)
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::packet_drop_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::PacketDropBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_packet_drop(p, &$crate::__event::packet_drops(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::tcp_retrans_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::TcpRetransBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_tcp_retrans(p, &$crate::__event::tcp_retransmits(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::tcp_reset_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::TcpResetBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_tcp_reset(p, &$crate::__event::tcp_resets(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::tcp_connect_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::TcpConnectBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_tcp_connect(p, &$crate::__event::tcp_connects(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::softirq_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::SoftirqBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_softirq(p, &$crate::__event::softirqs(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::netdev_latency_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::NetdevLatencyBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_netdev_latency(p, &$crate::__event::netdev_latencies(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::io_latency_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::IoLatencyBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_io_latency(p, &$crate::__event::io_latencies(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::dns_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::DnsBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_dns(p, &$crate::__event::dns(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::tcp_state_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::TcpStateBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| {
                        $crate::Plugin::on_tcp_state(p, &$crate::__event::tcp_states(&batch))
                    })
                }
            }

            impl $crate::bindings::exports::sonde::plugin::packed_handler::Guest for Exports {
                fn handle(batch: $crate::bindings::sonde::plugin::types::PackedBatch) {
                    $crate::__glue::with(&PLUGIN, (), |p| $crate::__glue::packed(p, &batch))
                }
            }

            // The component's exports, made on WebAssembly only: built for the host (a plugin
            // crate's tests, `cargo test --workspace`), a cdylib cannot export names such as
            // `sonde:plugin/tick@0.2.1#tick` (the linker's version script refuses the colon).
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::__export_world!(Exports with_types_in $crate::bindings);

            // On the host, this keeps the plugin's code reachable instead (nothing calls it),
            // so that it builds there as it does for WebAssembly.
            #[cfg(not(target_arch = "wasm32"))]
            #[unsafe(no_mangle)]
            extern "C" fn __sonde_plugin_host_exports() -> usize {
                use $crate::bindings::exports::sonde::plugin as x;
                [
                    <Exports as x::init::Guest>::init as usize,
                    <Exports as x::tick::Guest>::tick as usize,
                    <Exports as x::enrich::Guest>::workload_labels as usize,
                    <Exports as x::packet_drop_handler::Guest>::handle as usize,
                    <Exports as x::tcp_retrans_handler::Guest>::handle as usize,
                    <Exports as x::tcp_reset_handler::Guest>::handle as usize,
                    <Exports as x::tcp_connect_handler::Guest>::handle as usize,
                    <Exports as x::softirq_handler::Guest>::handle as usize,
                    <Exports as x::netdev_latency_handler::Guest>::handle as usize,
                    <Exports as x::io_latency_handler::Guest>::handle as usize,
                    <Exports as x::dns_handler::Guest>::handle as usize,
                    <Exports as x::tcp_state_handler::Guest>::handle as usize,
                    <Exports as x::packed_handler::Guest>::handle as usize,
                ]
                .len()
            }
        };
    };
}

impl Workload {
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>) -> Self {
        Workload {
            namespace: namespace.into(),
            pod: pod.into(),
        }
    }
}

/// `namespace/pod`, or just `pod` when the namespace is empty (a named network namespace).
impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.pod)
        } else {
            write!(f, "{}/{}", self.namespace, self.pod)
        }
    }
}
