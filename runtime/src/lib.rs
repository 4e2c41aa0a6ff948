//! Sonde node agent: turns the probes of `ebpf-core` into Prometheus metrics and JSON events
//! labelled with the pod they concern.
//!
//! Data flow: probes (kernel counters and ring buffers) → collectors decode records into
//! typed [`event::Event`]s → topology enriches them with node, namespace and pod → batches fan
//! out to the consumers (event sinks today; plugins and scripts later), while in-kernel
//! counters feed the Prometheus registry.

pub mod addr_hash;
pub mod agent;
pub mod auth;
pub mod caps;
pub mod config;
pub mod enrich;
pub mod event;
pub mod event_stream;
pub mod exporter;
pub mod fanout;
pub mod kallsyms;
pub mod memory;
pub mod metrics;
pub mod netlink;
pub mod plugin_host;
pub mod probes;
pub mod schema;
pub mod script;
pub mod server;
pub mod sinks;
pub mod timefmt;
pub mod tls;
pub mod topology;
pub mod trace;
pub mod units;
