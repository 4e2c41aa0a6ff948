//! Two pods joined by a link with a fixed one-way delay, for latency tests on a kernel without
//! the netem qdisc: each pod has a TUN device `tun0`, and relay threads in the test process
//! carry every packet from one pod's TUN to the other's after the delay. Plain IPv4 point to
//! point, no ARP; stopped and deleted (with the namespaces) when dropped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{in_netns, Netns};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// How often an idle relay checks whether it should stop.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Pods `a` (198.18.250.1) and `b` (198.18.250.2), each alone in its namespace, joined by a
/// link that delays every packet by `delay` in each direction (so the RTT is twice that).
pub struct SlowPodPair {
    pub a: Netns,
    pub b: Netns,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
    relays: Vec<JoinHandle<()>>,
}

impl SlowPodPair {
    pub fn new(delay: Duration) -> SlowPodPair {
        let a = Netns::new("slow-a");
        let b = Netns::new("slow-b");
        let (a_ip, b_ip) = (
            Ipv4Addr::new(198, 18, 250, 1),
            Ipv4Addr::new(198, 18, 250, 2),
        );
        let tun_a = open_tun(&a);
        let tun_b = open_tun(&b);
        for (netns, ip) in [(&a, a_ip), (&b, b_ip)] {
            netns.ip(&format!("addr add {ip}/24 dev tun0"));
            netns.ip("link set tun0 up");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let a_to_b = tun_a.try_clone().expect("duplicate the TUN fd");
        let b_to_a = tun_b.try_clone().expect("duplicate the TUN fd");
        let relays = vec![
            relay("relay a->b", tun_a, b_to_a, delay, Arc::clone(&stop)),
            relay("relay b->a", tun_b, a_to_b, delay, Arc::clone(&stop)),
        ];
        SlowPodPair {
            a,
            b,
            a_ip,
            b_ip,
            stop,
            relays,
        }
    }
}

impl Drop for SlowPodPair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.relays.drain(..) {
            let _ = r.join();
        }
    }
}

/// Creates `tun0` in `netns` and returns its file.
fn open_tun(netns: &Netns) -> File {
    in_netns(netns.name(), || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap_or_else(|e| panic!("cannot open /dev/net/tun: {e}"));
        // struct ifreq: the name, then the flags.
        let mut ifr = [0u8; 40];
        ifr[..4].copy_from_slice(b"tun0");
        ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which ifr is large enough for.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            panic!(
                "TUNSETIFF in {}: {}",
                netns.name(),
                std::io::Error::last_os_error()
            );
        }
        file
    })
}

/// Reads packets from `from` and writes each to `to` once `delay` has passed since it was read.
fn relay(
    name: &str,
    mut from: File,
    mut to: File,
    delay: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                while queue.front().is_some_and(|(due, _)| *due <= now) {
                    let (_, packet) = queue.pop_front().unwrap();
                    // A packet the other side cannot take is lost, as on a real link.
                    let _ = to.write(&packet);
                }
                let wait = queue
                    .front()
                    .map_or(IDLE_POLL, |(due, _)| due.saturating_duration_since(now))
                    .min(IDLE_POLL);
                let mut pfd = libc::pollfd {
                    fd: from.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
                if ready > 0 && pfd.revents & libc::POLLIN != 0 {
                    if let Ok(n) = from.read(&mut buf) {
                        queue.push_back((Instant::now() + delay, buf[..n].to_vec()));
                    }
                }
            }
        })
        .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"))
}
