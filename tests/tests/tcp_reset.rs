//! tcp_reset: connects to a closed port in pod B are refused; B's sent resets, B's NO_SOCKET
//! drops and A's received resets are counted exactly, and the sent resets are reported as events
//! (over IPv4 and IPv6: before Linux 6.10 these resets are seen by kprobes, one per family). A
//! reset sent by a socket is counted once, also where those kprobes are attached, and a reset
//! that reaches no socket is answered by none and counted as none.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::json;
use sonde_tests::{
    drop_reason, field_ip, field_u64, in_netns, refused_connects, Agent, AgentConfig, IpFamily,
    PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const CLOSED_PORT: u16 = 7777;
const CONNECTS: usize = 20;
const RESETS: &str = "sonde_tcp_resets_total";
const DROPS: &str = "sonde_packet_drops_total";

/// The agent with only the probes these tests read (tcp_reset, and packet_drop for the
/// NO_SOCKET drops): another probe that cannot load on a kernel of the matrix (io_latency on
/// 5.10) must not keep it from being ready.
fn spawn_agent() -> Agent {
    Agent::spawn(&AgentConfig {
        tcp_retrans: false,
        tcp_connect: false,
        softirq: false,
        io_latency: false,
        ..AgentConfig::default()
    })
}

#[test]
fn connects_to_closed_port() {
    connects_to_closed_port_over(IpFamily::V4);
}

#[test]
fn connects_to_closed_port_ipv6() {
    connects_to_closed_port_over(IpFamily::V6);
}

fn connects_to_closed_port_over(family: IpFamily) {
    let pods = PodPair::new();
    let agent = spawn_agent();
    agent.wait_ready(READY_TIMEOUT);

    let sent = [("pod", pods.b.name()), ("direction", "sent")];
    let received = [("pod", pods.a.name()), ("direction", "received")];
    let no_socket = [("pod", pods.b.name()), ("reason", drop_reason("NO_SOCKET"))];
    let series = [(RESETS, &sent), (RESETS, &received), (DROPS, &no_socket)];
    let baselines: Vec<f64> = series
        .iter()
        .map(|(name, labels)| agent.metric(name, &labels[..]).unwrap_or(0.0))
        .collect();

    let dst = SocketAddr::new(pods.b_end.ip(family), CLOSED_PORT);
    refused_connects(&pods.a, dst, CONNECTS);

    for ((name, labels), baseline) in series.iter().zip(&baselines) {
        agent.wait_metric(
            name,
            &labels[..],
            baseline + CONNECTS as f64,
            SETTLE_TIMEOUT,
        );
    }
    for ((name, labels), baseline) in series.iter().zip(&baselines) {
        let expected = baseline + CONNECTS as f64;
        assert_eq!(
            agent.metric(name, &labels[..]),
            Some(expected),
            "{name}{labels:?} after {CONNECTS} refused connects"
        );
    }

    let related = json!({"type": "tcp_reset", "pod": pods.b.name(), "direction": "sent"});
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        &format!("a tcp_reset event sent by {dst}"),
        &related,
        |e| {
            field_ip(e, "saddr") == Some(dst.ip())
                && field_u64(e, "sport") == Some(CLOSED_PORT.into())
                && field_ip(e, "daddr") == Some(pods.a_end.ip(family))
        },
    );
}

/// A socket that shut down both ways and then receives data answers with a reset, through
/// tcp_v4_send_reset with itself as the socket: the tracepoint counts it, and the kprobe that
/// kernels before 6.10 also attach there must not count it again.
#[test]
fn a_reset_from_a_socket_is_counted_once() {
    const PORT: u16 = 7778;
    const IO_TIMEOUT: Duration = Duration::from_secs(10);
    let pods = PodPair::new();
    let agent = spawn_agent();
    agent.wait_ready(READY_TIMEOUT);

    let sent_by_a = [("pod", pods.a.name()), ("direction", "sent")];
    let sent_by_b = [("pod", pods.b.name()), ("direction", "sent")];
    let received_by_b = [("pod", pods.b.name()), ("direction", "received")];
    let baseline = |labels: &[(&str, &str)]| agent.metric(RESETS, labels).unwrap_or(0.0);
    let (a0, b0, rb0) = (
        baseline(&sent_by_a),
        baseline(&sent_by_b),
        baseline(&received_by_b),
    );

    let server_addr = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let listener = in_netns(pods.b.name(), || {
        TcpListener::bind(server_addr).expect("listen in pod b")
    });
    let client = in_netns(pods.a.name(), || {
        TcpStream::connect_timeout(&server_addr, IO_TIMEOUT).expect("connect to pod b")
    });
    let (mut conn, _) = listener.accept().expect("accept in pod b");
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The client sends its FIN and will read nothing more; once the server has it, data the
    // server sends is answered with a reset.
    client.shutdown(Shutdown::Both).unwrap();
    assert_eq!(conn.read(&mut [0; 16]).expect("read the client's FIN"), 0);
    conn.write_all(b"late").unwrap();

    agent.wait_metric(RESETS, &sent_by_a, a0 + 1.0, SETTLE_TIMEOUT);
    agent.wait_metric(RESETS, &received_by_b, rb0 + 1.0, SETTLE_TIMEOUT);
    // Both hooks would have counted by now: a second count shows at once.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.metric(RESETS, &sent_by_a),
        Some(a0 + 1.0),
        "resets sent by pod a"
    );
    assert_eq!(
        agent.metric(RESETS, &sent_by_b).unwrap_or(0.0),
        b0,
        "resets sent by pod b"
    );
    drop(client);
}

/// Closes `stream` with a reset (`SO_LINGER` 0): the kernel's active reset, a full socket's.
fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid struct linger of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// A reset that reaches no socket goes through tcp_v4_send_reset without one, which sends
/// nothing back to a reset: the kprobe that kernels before 6.10 attach there must not count
/// it. Pod b aborts its end (one reset, which pod a's firewall drops), then pod a aborts its
/// own, whose reset finds no socket in b.
#[test]
fn a_reset_answering_no_socket_is_not_answered() {
    const PORT: u16 = 7779;
    const IO_TIMEOUT: Duration = Duration::from_secs(10);
    let pods = PodPair::new();
    let agent = spawn_agent();
    agent.wait_ready(READY_TIMEOUT);

    let sent_by_a = [("pod", pods.a.name()), ("direction", "sent")];
    let sent_by_b = [("pod", pods.b.name()), ("direction", "sent")];
    let no_socket = [("pod", pods.b.name()), ("reason", drop_reason("NO_SOCKET"))];
    let baseline = |name: &str, labels: &[(&str, &str)]| agent.metric(name, labels).unwrap_or(0.0);
    let (a0, b0, d0) = (
        baseline(RESETS, &sent_by_a),
        baseline(RESETS, &sent_by_b),
        baseline(DROPS, &no_socket),
    );

    let server_addr = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let listener = in_netns(pods.b.name(), || {
        TcpListener::bind(server_addr).expect("listen in pod b")
    });
    let client = in_netns(pods.a.name(), || {
        TcpStream::connect_timeout(&server_addr, IO_TIMEOUT).expect("connect to pod b")
    });
    let (conn, _) = listener.accept().expect("accept in pod b");
    // Else the listener would take pod a's reset.
    drop(listener);
    pods.a.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p tcp --sport {PORT} -j DROP"),
    );
    abort(conn);
    agent.wait_metric(RESETS, &sent_by_b, b0 + 1.0, SETTLE_TIMEOUT);
    abort(client);
    agent.wait_metric(RESETS, &sent_by_a, a0 + 1.0, SETTLE_TIMEOUT);
    // Pod b has the reset, without a socket for it, by now.
    agent.wait_metric(DROPS, &no_socket, d0 + 1.0, SETTLE_TIMEOUT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.metric(RESETS, &sent_by_b),
        Some(b0 + 1.0),
        "resets sent by pod b"
    );
    assert_eq!(
        agent.metric(RESETS, &sent_by_a),
        Some(a0 + 1.0),
        "resets sent by pod a"
    );
}
