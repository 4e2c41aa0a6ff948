//! `netstat` probe: the counters operators already know from /proc, per pod network
//! namespace. Not an eBPF program: a dedicated thread reads each pod's
//! `{snmp,snmp6,netstat,dev,sockstat,stat/nf_conntrack}` through `/proc/<pid>/net` of one of
//! its processes, and enters the namespace with `setns` (CAP_SYS_ADMIN) only for the qdisc
//! statistics (an rtnetlink dump) and for namespaces known by a file alone (standalone's
//! `/run/netns`), returning to the agent's namespace before the next one. Every `interval` the whole reading replaces the previous
//! one, and a scrape exports the latest reading: the kernel's own totals as counters, so
//! series of a namespace that is gone disappear instead of lingering.
//!
//! A dedicated thread because a namespace is a property of the thread that joined it: no
//! tokio worker ever leaves the agent's namespace. `/proc/thread-self/net` (not
//! `/proc/self/net`, which is the main thread's) shows the namespace the thread is in.
//!
//! Here: the config and the probe's lifecycle; `read` the thread, `series` the exported
//! families, `procfs` and `qdisc` the parsers.

pub mod counters;
pub mod procfs;
pub mod qdisc;
mod read;
mod series;

use crate::config::Invalid;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{Context, ProbeStatus};
pub use counters::Counters;
use read::read_loop;
use series::Series;

pub const NAME: &str = "netstat";
pub const DESCRIPTION: &str = "the kernel's network counters (snmp, TcpExt, dev, sockstat, softnet, conntrack, qdisc), read from /proc/net in each pod namespace (not eBPF)";
/// What the probe reads, shown where the eBPF probes show their hooks.
pub const SOURCES: &[&str] = &["procfs:/proc/net/* in each netns", "rtnetlink:RTM_GETQDISC"];

/// `probes.netstat` in the agent config. The probe emits no events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// How often every namespace is read; a scrape exports the latest reading.
    #[serde(deserialize_with = "interval")]
    pub interval: Duration,
    /// Read the agent's own (host) namespace too, with empty `namespace` and `pod` labels.
    pub include_host: bool,
    /// What to read: any of snmp, snmp6, netstat, dev, sockstat, softnet, conntrack, qdisc.
    pub groups: Vec<Group>,
    /// Which of what is read from a pod's namespace is exported: the curated set (`default`),
    /// `all`, or a list (see [`counters`]).
    #[serde(deserialize_with = "counters::deserialize")]
    pub counters: Counters,
    /// The same for the agent's own (host) namespace: `all` by default, so node-level totals
    /// stay complete.
    #[serde(deserialize_with = "counters::deserialize")]
    pub host_counters: Counters,
}

/// One source of counters (see the README's metric list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// /proc/net/snmp: Ip, Icmp, Tcp, Udp, UdpLite.
    Snmp,
    /// /proc/net/snmp6: Ip6, Icmp6, Udp6, UdpLite6.
    Snmp6,
    /// /proc/net/netstat: TcpExt, IpExt.
    Netstat,
    /// /proc/net/dev: per interface.
    Dev,
    /// /proc/net/sockstat.
    Sockstat,
    /// /proc/net/softnet_stat: per CPU, host only (it is not per namespace).
    Softnet,
    /// /proc/net/stat/nf_conntrack and the conntrack count and limit, when loaded.
    Conntrack,
    /// rtnetlink qdisc statistics, per interface.
    Qdisc,
}

const ALL_GROUPS: [Group; 8] = [
    Group::Snmp,
    Group::Snmp6,
    Group::Netstat,
    Group::Dev,
    Group::Sockstat,
    Group::Softnet,
    Group::Conntrack,
    Group::Qdisc,
];

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            interval: Duration::from_secs(10),
            include_host: true,
            groups: ALL_GROUPS.to_vec(),
            counters: Counters::curated(),
            host_counters: Counters::all(),
        }
    }
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "interval")
}

pub fn validate(c: &Config) -> Result<(), Invalid> {
    if c.interval < Duration::from_millis(100) || c.interval > Duration::from_secs(3600) {
        return Err(Invalid::new(
            "probes.netstat.interval",
            format!("{:?} must be between 100ms and 1h", c.interval),
        ));
    }
    c.counters.validate("counters", &c.groups, true)?;
    c.host_counters.validate("hostCounters", &c.groups, false)
}

/// Why netstat cannot read, or stopped reading.
#[derive(Debug, thiserror::Error)]
pub enum NetstatError {
    #[error("cannot read /proc/net/snmp: {0}")]
    Snmp(#[source] std::io::Error),
    #[error("cannot open /proc/thread-self/ns/net: {0}")]
    OwnNamespace(#[source] std::io::Error),
    /// The reading thread could not get back to the agent's namespace after reading a pod's
    /// (it ends then, so that nothing else runs in a pod's namespace).
    #[error("cannot return to the agent's network namespace after reading {path}: {source}")]
    Return {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the netstat thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the reading thread panicked")]
    Panicked,
}

/// Whether the probe can run here, for `sonde probes`, and what it lacks: without entering
/// network namespaces (CAP_SYS_ADMIN, tried by re-joining our own on a throwaway thread) it
/// reads pods through their processes' `/proc/<pid>/net` but not their qdiscs.
pub fn check() -> Result<Option<String>, NetstatError> {
    std::fs::read_to_string("/proc/net/snmp").map_err(NetstatError::Snmp)?;
    let entered = std::thread::spawn(|| {
        let own = File::open("/proc/thread-self/ns/net").map_err(NetstatError::OwnNamespace)?;
        setns(&own).map_err(NetstatError::OwnNamespace)
    })
    .join()
    .unwrap_or(Err(NetstatError::Panicked));
    Ok(entered.err().map(|e| {
        format!(
            "cannot enter network namespaces (setns: {e}; needs CAP_SYS_ADMIN): pods' qdisc \
             series and namespaces without a process (standalone /run/netns) are not read"
        )
    }))
}

pub(crate) fn setns(fd: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd; it changes only the calling thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The netstat probe as the agent holds it: its series, and the reading thread while on.
pub struct Netstat {
    series: Series,
    running: Option<Reader>,
    /// Why it could not start, when it could not.
    failed: Option<String>,
}

struct Reader {
    config: Config,
    /// New configs for the thread; dropping it stops the thread.
    tx: mpsc::Sender<Config>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current namespace at the latest.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Netstat {
    /// The probe, off; its series registered with the agent's registry.
    pub fn new(ctx: &Context) -> Self {
        let series = Series::new(Arc::clone(&ctx.node), Arc::clone(&ctx.metrics.budget));
        if let Err(e) = ctx.metrics.registry.register(Box::new(series.clone())) {
            tracing::error!(probe = NAME, error = %e, "cannot register the netstat series");
        }
        Netstat {
            series,
            running: None,
            failed: None,
        }
    }

    /// Starts, reconfigures or stops the reading thread to match `config`; true when running.
    pub fn apply(&mut self, config: &Config, ctx: &Arc<Context>) -> bool {
        if !config.enabled {
            if self.running.take().is_some() {
                tracing::info!(probe = NAME, "probe disabled");
            }
            self.failed = None;
            self.series.clear();
            return false;
        }
        if let Some(r) = &mut self.running {
            if r.config != *config {
                if r.tx.send(config.clone()).is_ok() {
                    r.config = config.clone();
                    tracing::info!(probe = NAME, "probe reconfigured");
                } else {
                    self.running = None;
                }
            }
        }
        if self.running.is_none() {
            match self.start(config, ctx) {
                Ok(r) => {
                    self.running = Some(r);
                    self.failed = None;
                    tracing::info!(
                        probe = NAME,
                        "probe started (reads /proc/net in each pod namespace)"
                    );
                }
                Err(e) => {
                    tracing::error!(probe = NAME, error = %e, "probe cannot load");
                    self.failed = Some(e.to_string());
                }
            }
        }
        self.running.is_some() && self.fatal().is_none()
    }

    fn start(&self, config: &Config, ctx: &Arc<Context>) -> Result<Reader, NetstatError> {
        check()?;
        self.series.clear();
        let (tx, rx) = mpsc::channel();
        let series = self.series.clone();
        let topology = Arc::clone(&ctx.topology);
        let first = config.clone();
        let thread = std::thread::Builder::new()
            .name("sonde-netstat".into())
            .spawn(move || {
                let run =
                    std::panic::AssertUnwindSafe(|| read_loop(first, rx, &series, &*topology));
                let stopped = match std::panic::catch_unwind(run) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(_) => NetstatError::Panicked,
                };
                tracing::error!(probe = NAME, error = %stopped, "netstat reading stopped");
                series.lock().fatal = Some(stopped.to_string());
            })
            .map_err(NetstatError::Thread)?;
        Ok(Reader {
            config: config.clone(),
            tx,
            thread: Some(thread),
        })
    }

    fn fatal(&self) -> Option<String> {
        self.series.lock().fatal.clone()
    }

    /// True while reading.
    pub fn up(&self) -> bool {
        self.running.is_some() && self.fatal().is_none()
    }

    pub fn status(&self) -> ProbeStatus {
        let (state, error) = match (&self.running, &self.failed, self.fatal()) {
            (Some(_), _, Some(e)) => ("failed", Some(e)),
            (Some(_), _, None) => ("running", None),
            (None, Some(e), _) => ("failed", Some(e.clone())),
            (None, None, _) => ("disabled", None),
        };
        ProbeStatus {
            name: NAME,
            description: DESCRIPTION,
            hooks: SOURCES.iter().map(ToString::to_string).collect(),
            state,
            error,
            attempts: None,
            retry_in_seconds: None,
            degraded: None,
            attach: None,
            interfaces: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        let c: Config = serde_yaml_ng::from_str("interval: 2s\ngroups: [snmp, qdisc]\n").unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.groups, vec![Group::Snmp, Group::Qdisc]);
        assert!(c.enabled && c.include_host);
        let e = serde_yaml_ng::from_str::<Config>("groups: [tcp]\n").unwrap_err();
        assert!(e.to_string().contains("snmp"), "{e}");
        let c: Config = serde_yaml_ng::from_str("interval: 10ms\n").unwrap();
        assert_eq!(validate(&c).unwrap_err().field, "probes.netstat.interval");
    }
}
