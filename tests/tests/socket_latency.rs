//! socket_latency: datagrams an application holds for a known time before reading them are
//! observed once each, at least that long, in the histogram of the receiving pod (UDP and TCP);
//! a UDP socket with a tiny receive buffer that does not read counts, in its pod, exactly the
//! datagrams that did not fit; a packet routed through another namespace (a node's) counts
//! from its arrival in the receiving pod, not from the earlier one; with `samplePackets: N`
//! about one read in N is timed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use sonde_tests::{
    in_netns, run_command, send_udp, try_poll_until, Agent, Netns, PodPair, READY_TIMEOUT,
    SETTLE_TIMEOUT,
};

const COUNT: &str = "sonde_socket_read_latency_seconds_count";
const SUM: &str = "sonde_socket_read_latency_seconds_sum";
const BUCKET: &str = "sonde_socket_read_latency_seconds_bucket";
const OVERFLOWS: &str = "sonde_socket_overflows_total";

/// How long the application holds what it received before reading it: just above the
/// 2^18 us (262.144 ms) bucket bound, so no observation may fall into that bucket or below.
const HOLD: Duration = Duration::from_millis(280);
const BELOW_HOLD: &str = "0.262144";

/// An agent timing one arrival in `sample_packets` (1: every one).
fn agent_sampling(sample_packets: u32) -> Agent {
    let agent = Agent::spawn_yaml(&format!(
        "node: sonde-test-node\n\
         probes:\n  socket_latency:\n    enabled: true\n    samplePackets: {sample_packets}\n\
         topology:\n  netnsDir: /run/netns\n\
         metrics:\n  podHistogramBuckets: fine\n",
    ));
    agent.wait_ready(READY_TIMEOUT);
    agent.wait_metric_eq(
        "sonde_probe_up",
        &[("probe", "socket_latency")],
        1.0,
        READY_TIMEOUT,
    );
    agent
}

/// An agent timing every packet.
fn agent() -> Agent {
    agent_sampling(1)
}

/// A UDP socket on `addr` in pod `netns`, with SO_RCVBUF set to `rcvbuf` when given.
fn udp_receiver(netns: &str, addr: SocketAddr, rcvbuf: Option<i32>) -> UdpSocket {
    in_netns(netns, || {
        let socket =
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {netns}: {e}"));
        if let Some(size) = rcvbuf {
            // SAFETY: setsockopt on a valid socket with a pointer to an int of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    &size as *const i32 as *const libc::c_void,
                    std::mem::size_of::<i32>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        }
        socket
    })
}

/// Reads every datagram waiting in `socket` without blocking; returns how many there were.
fn drain(socket: &UdpSocket) -> usize {
    socket.set_nonblocking(true).expect("non-blocking socket");
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        match socket.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn held_reads_are_observed_once_each_and_at_least_the_hold() {
    let pods = PodPair::new();
    let agent = agent();
    let b = pods.b.name();
    let pod = [("pod", b)];

    // UDP: K datagrams queued, held, then read.
    const K: usize = 5;
    let dst = SocketAddr::new(pods.b_end.ipv4.into(), 47210);
    let receiver = udp_receiver(b, dst, None);
    send_udp(&pods.a, pods.a_end.ipv4.into(), dst, K);
    thread::sleep(HOLD);
    receiver
        .set_read_timeout(Some(SETTLE_TIMEOUT))
        .expect("read timeout");
    let mut buf = [0u8; 2048];
    for i in 0..K {
        receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {K}: {e}"));
    }
    agent.wait_metric_eq(COUNT, &pod, K as f64, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(BUCKET, &[("pod", b), ("le", BELOW_HOLD)]),
        Some(0.0),
        "UDP reads observed faster than the {HOLD:?} hold"
    );
    let sum = agent.metric(SUM, &pod).expect("the histogram's sum");
    assert!(sum >= K as f64 * HOLD.as_secs_f64(), "sum {sum}");

    // TCP: each message held before it is read (one at a time, so that the receiver does
    // not coalesce them into one skb), M more observations.
    const M: usize = 3;
    let dst = SocketAddr::new(pods.b_end.ipv4.into(), 47211);
    let listener = in_netns(b, || TcpListener::bind(dst).expect("listen in b"));
    let mut client = in_netns(pods.a.name(), || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(10)).expect("connect to b")
    });
    client.set_nodelay(true).unwrap();
    let (mut server, _) = listener.accept().expect("accept in b");
    let mut byte = [0u8; 1];
    for _ in 0..M {
        client.write_all(b"x").unwrap();
        thread::sleep(HOLD);
        server.read_exact(&mut byte).unwrap();
    }
    agent.wait_metric_eq(COUNT, &pod, (K + M) as f64, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(BUCKET, &[("pod", b), ("le", BELOW_HOLD)]),
        Some(0.0),
        "TCP reads observed faster than the {HOLD:?} hold"
    );
    // Pod A read nothing.
    assert_eq!(agent.metric(COUNT, &[("pod", pods.a.name())]), None);
}

#[test]
fn a_full_receive_buffer_counts_every_datagram_it_refused() {
    let pods = PodPair::new();
    let agent = agent();
    let b = pods.b.name();
    let labels = [("pod", b), ("kind", "rcvqueue_full")];

    const N: usize = 50;
    let dst = SocketAddr::new(pods.b_end.ipv4.into(), 47212);
    // The kernel rounds SO_RCVBUF up to its minimum: room for a few small datagrams.
    let receiver = udp_receiver(b, dst, Some(1));
    send_udp(&pods.a, pods.a_end.ipv4.into(), dst, N);
    // Every datagram was either queued (drained here) or refused (counted by the agent).
    let mut queued = 0;
    let mut overflows = None;
    let settled = try_poll_until(SETTLE_TIMEOUT, || {
        queued += drain(&receiver);
        overflows = agent.metric(OVERFLOWS, &labels);
        (overflows.unwrap_or(0.0) as usize + queued == N).then_some(())
    });
    assert!(
        settled.is_some(),
        "{queued} of {N} datagrams queued, overflow count {overflows:?}"
    );
    assert!(queued > 0 && queued < N, "{queued} of {N} datagrams queued");
    assert_eq!(overflows, Some((N - queued) as f64));
    assert_eq!(
        agent.metric(OVERFLOWS, &[("pod", pods.a.name())]),
        None,
        "the sender's pod overflowed"
    );
}

/// Pods A and B on either side of a router namespace (a node's network namespace, with a veth
/// to each pod), whose link to B is shaped by a tbf qdisc: a datagram arrives in the router,
/// waits there for its turn, then arrives in B. B reads each as it comes, so only the arrival
/// in B's namespace makes the times short.
#[test]
fn the_arrival_that_counts_is_the_one_in_the_receiving_pod() {
    let (a, router, b) = (Netns::new("a"), Netns::new("node"), Netns::new("b"));
    let (a_ip, b_ip) = ("198.18.251.1", "198.18.251.2");
    let macs = [
        "02:5e:00:00:00:01",
        "02:5e:00:00:00:02",
        "02:5e:00:00:00:03",
        "02:5e:00:00:00:04",
    ];
    for (pod, ip, pod_mac, side, side_mac) in [
        (&a, a_ip, macs[0], "va", macs[1]),
        (&b, b_ip, macs[2], "vb", macs[3]),
    ] {
        run_command(&format!(
            "ip link add eth0 netns {} address {pod_mac} type veth peer name {side} netns {} address {side_mac}",
            pod.name(),
            router.name()
        ));
        pod.ip(&format!("addr add {ip}/32 dev eth0"));
        pod.ip("link set eth0 up");
        router.ip(&format!("link set {side} up"));
        router.ip(&format!("route add {ip}/32 dev {side}"));
        router.ip(&format!(
            "neigh replace {ip} lladdr {pod_mac} dev {side} nud permanent"
        ));
        // The pod reaches everything through the router's end of its link.
        pod.ip("route add 198.18.251.254/32 dev eth0");
        pod.ip(&format!(
            "neigh replace 198.18.251.254 lladdr {side_mac} dev eth0 nud permanent"
        ));
        pod.ip("route add 198.18.251.0/24 via 198.18.251.254 dev eth0");
    }
    run_command(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_forward=1",
        router.name()
    ));
    // One 1 KB datagram at a time, about 80 ms each, toward B.
    run_command(&format!(
        "tc -n {} qdisc add dev vb root tbf rate 100kbit burst 1600 latency 5s",
        router.name()
    ));
    let agent = agent();

    const K: usize = 5;
    let dst: SocketAddr = format!("{b_ip}:47213").parse().unwrap();
    let receiver = udp_receiver(b.name(), dst, None);
    receiver
        .set_read_timeout(Some(SETTLE_TIMEOUT))
        .expect("read timeout");
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for i in 0..K {
            receiver
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {i} of {K}: {e}"));
        }
    });
    in_netns(a.name(), || {
        let socket = UdpSocket::bind(format!("{a_ip}:0")).expect("bind in a");
        for i in 0..K {
            socket
                .send_to(&[0u8; 1000], dst)
                .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        }
    });
    reader.join().expect("the reader");

    let pod = [("pod", b.name())];
    agent.wait_metric_eq(COUNT, &pod, K as f64, SETTLE_TIMEOUT);
    // The last datagram waited about 4 * 80 ms in the router; none waited in B.
    assert_eq!(
        agent.metric(BUCKET, &[("pod", b.name()), ("le", "0.016384")]),
        Some(K as f64),
        "reads timed from the router's arrival (sum {:?} s)",
        agent.metric(SUM, &pod)
    );
}

/// With `samplePackets: 8`, about one datagram in 8 is stamped on arrival and timed when
/// read: of 2000, about 250 (a standard deviation of 15), and never all. The datagrams are
/// sent and read in rounds of 20, under the 32 unread ones a socket's queue is followed for.
#[test]
fn one_read_in_sample_packets_is_timed() {
    const ROUNDS: usize = 100;
    const ROUND: usize = 20;
    const EVERY: usize = 8;
    let pods = PodPair::new();
    let agent = agent_sampling(EVERY as u32);
    let b = pods.b.name();
    let dst = SocketAddr::new(pods.b_end.ipv4.into(), 47214);
    let receiver = udp_receiver(b, dst, None);
    receiver
        .set_read_timeout(Some(SETTLE_TIMEOUT))
        .expect("read timeout");
    let mut buf = [0u8; 2048];
    for round in 0..ROUNDS {
        send_udp(&pods.a, pods.a_end.ipv4.into(), dst, ROUND);
        for i in 0..ROUND {
            receiver
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}, datagram {i}: {e}"));
        }
    }
    // Counters are read from the kernel at each scrape, and the reads ran the programs.
    let read = (ROUNDS * ROUND) as f64;
    let expected = read / EVERY as f64;
    let timed = agent.metric(COUNT, &[("pod", b)]).unwrap_or(0.0);
    assert!(
        (expected / 2.0..=expected * 2.0).contains(&timed),
        "{timed} reads timed of {read} at one in {EVERY}"
    );
}
