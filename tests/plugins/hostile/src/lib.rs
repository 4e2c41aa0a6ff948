//! A plugin for the test suite: with `mode: count` it counts every event it is handed (per
//! probe, pod and reason or direction, into `sonde_test_events_seen_total`), so a test can
//! check it lost none;
//! every other mode misbehaves in one way, so a test can check the agent survives it.

use serde::Deserialize;
use sonde_plugin::{metrics::Counter, Config, Event, PacketDrop, Plugin, TcpReset, TcpRetrans};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mode: String,
}

struct Hostile {
    mode: String,
    seen: Option<Counter>,
    hoard: Vec<Vec<u8>>,
}

impl Hostile {
    /// What happens on every batch.
    fn misbehave(&mut self, probe: &str, keys: impl Iterator<Item = (String, String)>) {
        match self.mode.as_str() {
            "count" => {
                if let Some(seen) = &self.seen {
                    for (pod, reason) in keys {
                        let _ = seen.series(&[probe, &pod, &reason]).and_then(|s| s.inc());
                    }
                }
            }
            "loop" => loop {
                std::hint::black_box(&self.hoard);
            },
            "memory" => loop {
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            "trap-handler" => panic!("hostile plugin: trap in a handler"),
            "series" => {
                let c = self.seen.as_ref().expect("a counter from init");
                for i in 0..1_000_000u32 {
                    let _ = c.series(&[probe, &i.to_string(), ""]).and_then(|s| s.inc());
                }
            }
            "log-flood" => {
                for i in 0..100_000u32 {
                    sonde_plugin::log::info(&format!("hostile plugin log line {i}"));
                }
            }
            "event-flood" => {
                for i in 0..100_000i64 {
                    let _ = Event::new("hostile_flood").field("n", i).emit();
                }
            }
            _ => {}
        }
    }
}

/// What the sandbox lets through, as `sonde_test_sandbox{door}`: the wall clock's seconds,
/// 1 for a door that opened (a file read, a TCP connect, environment variables), and a
/// random number's low bits.
fn probe_sandbox() -> Result<(), String> {
    use sonde_plugin::metrics::Gauge;
    let g = Gauge::register(
        "sonde_test_sandbox",
        "What the sandbox let through.",
        &["door"],
    )
    .map_err(|e| e.to_string())?;
    let set = |door: &str, v: f64| {
        g.series(&[door])
            .and_then(|s| s.set(v))
            .map_err(|e| e.to_string())
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(-1.0);
    set("clock", clock)?;
    set(
        "file",
        if std::fs::read("/etc/hostname").is_ok() || std::fs::read_dir("/").is_ok() {
            1.0
        } else {
            0.0
        },
    )?;
    set(
        "network",
        if std::net::TcpStream::connect("127.0.0.1:22").is_ok() {
            1.0
        } else {
            0.0
        },
    )?;
    set("env", std::env::vars().count() as f64)?;
    // The seed of the standard library's hasher comes from the host's randomness.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    set("random", (h.finish() & 0xffff) as f64)?;
    Ok(())
}

fn pod(w: &Option<sonde_plugin::Workload>) -> String {
    w.as_ref().map(|w| w.pod.clone()).unwrap_or_default()
}

impl Plugin for Hostile {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.mode == "trap-init" {
            panic!("hostile plugin: trap in init");
        }
        if settings.mode == "fail-init" {
            return Err("config.mode: fail-init refuses to start".into());
        }
        if settings.mode == "sandbox" {
            probe_sandbox()?;
        }
        let name = match settings.mode.as_str() {
            "count" => Some("sonde_test_events_seen_total"),
            "series" => Some("sonde_test_series_bomb_total"),
            _ => None,
        };
        let seen = match name {
            Some(name) => Some(
                Counter::register(
                    name,
                    "Events the test plugin was handed.",
                    &["probe", "pod", "reason"],
                )
                .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        Ok(Hostile {
            mode: settings.mode,
            seen,
            hoard: Vec::new(),
        })
    }

    fn on_packet_drop(&mut self, batch: &[PacketDrop]) {
        self.misbehave(
            "packet_drop",
            batch
                .iter()
                .map(|e| (pod(&e.envelope.workload), e.reason.clone())),
        );
    }

    fn on_tcp_retrans(&mut self, batch: &[TcpRetrans]) {
        self.misbehave(
            "tcp_retrans",
            batch
                .iter()
                .map(|e| (pod(&e.envelope.workload), String::new())),
        );
    }

    fn on_tcp_reset(&mut self, batch: &[TcpReset]) {
        self.misbehave(
            "tcp_reset",
            batch
                .iter()
                .map(|e| (pod(&e.envelope.workload), e.direction.clone())),
        );
    }
}

sonde_plugin::export!(Hostile);
