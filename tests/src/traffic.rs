//! Traffic the tests send from inside a pod, with sockets created in its namespace.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::{in_netns, Netns};

/// Sends `count` UDP datagrams from a socket bound to `src` in `netns` to `dst`; returns the
/// source port.
pub fn send_udp(netns: &Netns, src: IpAddr, dst: SocketAddr, count: usize) -> u16 {
    in_netns(netns.name(), || {
        let socket = UdpSocket::bind(SocketAddr::new(src, 0))
            .unwrap_or_else(|e| panic!("bind a UDP socket to {src} in {}: {e}", netns.name()));
        for i in 0..count {
            socket
                .send_to(b"sonde integration test", dst)
                .unwrap_or_else(|e| panic!("datagram {i} to {dst}: {e}"));
        }
        socket
            .local_addr()
            .expect("read the UDP socket's address")
            .port()
    })
}

/// Makes `count` TCP connects from `netns` to `dst` and asserts that each is refused
/// (ECONNREFUSED: the peer answered the SYN with a reset).
pub fn refused_connects(netns: &Netns, dst: SocketAddr, count: usize) {
    in_netns(netns.name(), || {
        for i in 0..count {
            match TcpStream::connect_timeout(&dst, Duration::from_secs(5)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                other => panic!("connect {i} to {dst}: expected ECONNREFUSED, got {other:?}"),
            }
        }
    });
}

/// Sends `bytes` bytes over TCP from pod `from` to a listener on `to:port` in pod `to_ns`,
/// and checks that all arrived; returns the client's port.
pub fn bulk_transfer(from: &Netns, to_ns: &Netns, to: IpAddr, port: u16, bytes: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    const IO_TIMEOUT: Duration = Duration::from_secs(60);
    let server_addr = SocketAddr::new(to, port);
    let listener = in_netns(to_ns.name(), || {
        TcpListener::bind(server_addr).expect("listen in the server pod")
    });
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept in the server pod");
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut received = 0;
        let mut buf = vec![0; 64 << 10];
        loop {
            match conn
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("read from {peer} after {received} bytes: {e}"))
            {
                0 => return received,
                n => received += n,
            }
        }
    });
    let mut client = in_netns(from.name(), || {
        TcpStream::connect_timeout(&server_addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {server_addr}: {e}"))
    });
    client.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    client
        .write_all(&vec![0x5d; bytes])
        .expect("send the bulk data");
    client
        .shutdown(Shutdown::Write)
        .expect("shut down the sending side");
    assert_eq!(
        server.join().expect("the receiver panicked"),
        bytes,
        "bytes received"
    );
    client_port
}

/// Listens on `dst` in pod `server` and makes `count` TCP connects to it from pod `client`,
/// each accepted and closed; returns once the server has accepted them all.
pub fn connect_and_close(client: &Netns, server: &Netns, dst: SocketAddr, count: usize) {
    use std::net::TcpListener;
    let listener = in_netns(server.name(), || {
        TcpListener::bind(dst).unwrap_or_else(|e| panic!("listen on {dst}: {e}"))
    });
    let acceptor = std::thread::spawn(move || {
        for i in 0..count {
            listener
                .accept()
                .unwrap_or_else(|e| panic!("accept {i} on {dst}: {e}"));
        }
    });
    in_netns(client.name(), || {
        for i in 0..count {
            TcpStream::connect_timeout(&dst, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect {i} to {dst}: {e}"));
        }
    });
    acceptor.join().expect("the acceptor panicked");
}

/// Makes one TCP connect from `netns` to `dst`, which must go unanswered, and asserts that
/// the kernel gives up with ETIMEDOUT (set `net.ipv4.tcp_syn_retries` low in the pod first).
pub fn timed_out_connect(netns: &Netns, dst: SocketAddr) {
    in_netns(netns.name(), || {
        // Longer than the kernel's own SYN retries, so the kernel times out first.
        match TcpStream::connect_timeout(&dst, Duration::from_secs(30)) {
            Err(e)
                if e.kind() == ErrorKind::TimedOut && e.raw_os_error() == Some(libc::ETIMEDOUT) => {
            }
            other => panic!("connect to {dst}: expected ETIMEDOUT from the kernel, got {other:?}"),
        }
    });
}
