//! `script-bench`: what a `sonde trace` script costs per event, in process and without the
//! kernel: synthetic packet_drop events (as the collector makes them, enriched) go through
//! the event conversion and the handlers of a few one-liners, in batches of 1024 as the
//! fan-out delivers them.
//!
//! `cargo run --release -p sonde-tests --bin script-bench [-- --events N]`

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use sonde::event::{Event, Flow, Kind, Severity};
use sonde::probes::packet_drop::PacketDrop;
use sonde::script::event::EventConverter;
use sonde::script::{Limits, Script};
use sonde::topology::Workload;

const BATCH: usize = 1024;

fn events(n: usize) -> Vec<Event> {
    let pods: Vec<Arc<str>> = (0..8).map(|i| Arc::from(format!("pod-{i}"))).collect();
    let reasons: [Arc<str>; 2] = [Arc::from("NETFILTER_DROP"), Arc::from("NO_SOCKET")];
    let location: Arc<str> = Arc::from("nft_do_chain");
    let node: Arc<str> = Arc::from("node-1");
    (0..n)
        .map(|i| {
            let mut e = Event::kernel(
                UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000 + i as u64),
                4026532000 + (i % 8) as u32,
                Severity::Warning,
                Kind::PacketDrop(PacketDrop {
                    flow: Flow {
                        protocol: "udp".into(),
                        saddr: Some("198.18.0.1".parse().unwrap()),
                        sport: 30000 + (i % 1000) as u16,
                        daddr: Some("198.18.0.2".parse().unwrap()),
                        dport: 9999,
                    },
                    reason: Arc::clone(&reasons[i % 2]),
                    location: Arc::clone(&location),
                    stack: None,
                }),
            );
            e.node = Arc::clone(&node);
            e.workload = Some(Workload {
                namespace: Arc::from(""),
                pod: Arc::clone(&pods[i % 8]),
            });
            e
        })
        .collect()
}

fn main() {
    let mut n = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--events N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let events = events(n);
    let batches: Vec<&[Event]> = events.chunks(BATCH).collect();

    let mut convert = EventConverter::new();
    let start = Instant::now();
    let mut fields = 0;
    for e in &events {
        fields += convert.convert(e).len();
    }
    let conversion = start.elapsed();
    assert!(fields > 0);
    println!("| script | ns/event |");
    println!("|---|---:|");
    println!(
        "| (event conversion only) | {:.0} |",
        conversion.as_nanos() as f64 / n as f64
    );

    let scripts = [
        "fn on_packet_drop(e) { }",
        "fn on_packet_drop(e) { count(\"drops\", [e.pod, e.reason]); }",
        "fn on_packet_drop(e) { count(\"drops\"); }",
        "fn on_packet_drop(e) { hist(\"sport\", e.sport); }",
        "fn on_packet_drop(e) { lhist(\"dport\", e.pod, e.dport, 0, 65536, 4096); }",
        "fn on_packet_drop(e) { if e.dport == 9999 && e.pod != \"x\" { sum(\"bytes\", e.daddr, 1); } }",
    ];
    for source in scripts {
        let mut script = Script::compile(
            source,
            "bench",
            &["packet_drop"],
            Limits::default(),
            Arc::new(|_| {}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        for b in &batches {
            script.on_events(b).unwrap_or_else(|e| panic!("{e}"));
        }
        let took = start.elapsed();
        println!("| `{source}` | {:.0} |", took.as_nanos() as f64 / n as f64);
    }
}
