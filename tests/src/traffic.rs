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
