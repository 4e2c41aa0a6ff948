//! The agent's rtnetlink requests (links, addresses; qdisc statistics in `netstat`) and the
//! link notifications it follows, over the socket of `ebpf_core::netlink` (which the TC
//! filters use too), with netlink-packet-route's messages.

use std::io;
use std::net::IpAddr;

pub use ebpf_core::netlink::{RouteNetlinkMessage, Socket};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};

/// `RTMGRP_LINK`: the multicast group of link changes.
pub const GROUP_LINK: u32 = libc::RTMGRP_LINK as u32;
/// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`: the multicast groups of address changes.
const GROUPS_ADDRESSES: u32 = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;

/// A link as `RTM_NEWLINK` / `RTM_DELLINK` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
}

/// What a link notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// A link appeared or changed.
    New(Link),
    Gone(Link),
}

/// The link of an `RTM_NEWLINK` or `RTM_DELLINK` message (none without a name).
pub fn parse_link(msg: &LinkMessage) -> Option<Link> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    Some(Link {
        ifindex: msg.header.index,
        name,
    })
}

/// The link change a notification tells of, if it is one.
pub fn link_change(msg: &RouteNetlinkMessage) -> Option<LinkChange> {
    match msg {
        RouteNetlinkMessage::NewLink(m) => parse_link(m).map(LinkChange::New),
        RouteNetlinkMessage::DelLink(m) => parse_link(m).map(LinkChange::Gone),
        _ => None,
    }
}

/// Every link of the socket's namespace.
pub fn links(sock: &mut Socket) -> io::Result<Vec<Link>> {
    Ok(sock
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => parse_link(link),
            _ => None,
        })
        .collect())
}

/// The addresses of the calling thread's namespace, loopback (host scope) ones left out:
/// every pod has 127.0.0.1, so it names none.
pub fn addresses() -> io::Result<Vec<IpAddr>> {
    Ok(Socket::open(0)?
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(address) => parse_address(address),
            _ => None,
        })
        .collect())
}

/// A socket subscribed to a namespace's address changes, only polled and drained (a
/// [`Socket`] carries a 64 KiB buffer).
pub type Subscription = netlink_sys::Socket;

/// A non-blocking rtnetlink socket of the calling thread's namespace that receives a
/// notification whenever an address is added or removed there; [`drain`] it, then read the
/// addresses. It holds a reference on the namespace: close it when the namespace is to go.
pub fn subscribe_addresses() -> io::Result<Subscription> {
    let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)?;
    sock.set_non_blocking(true)?;
    sock.bind(&SocketAddr::new(0, GROUPS_ADDRESSES))?;
    Ok(sock)
}

/// Reads and discards whatever a subscription holds; whether anything was there (an
/// overrun, `ENOBUFS`, counts: notifications were lost).
pub fn drain(sock: &Subscription, buf: &mut [u8]) -> bool {
    let mut any = false;
    loop {
        let mut into = &mut buf[..];
        match sock.recv(&mut into, libc::MSG_DONTWAIT) {
            Ok(0) => return any,
            Ok(_) => any = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
            Err(_) => return any,
        }
    }
}

/// The address of an `RTM_NEWADDR` message (`IFA_LOCAL`, else `IFA_ADDRESS`), unless
/// host-scoped.
pub fn parse_address(msg: &AddressMessage) -> Option<IpAddr> {
    if msg.header.scope == AddressScope::Host {
        return None;
    }
    let mut found = None;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => found = Some(*ip),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::AddressFamily;
    use std::net::Ipv6Addr;

    /// `msg` as the kernel sends it, read back as Sonde reads it.
    fn round_trip(msg: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.emit(&mut bytes);
        ebpf_core::netlink::parse_message(msg.message_type(), &bytes).unwrap()
    }

    fn address(
        family: AddressFamily,
        scope: AddressScope,
        attributes: Vec<AddressAttribute>,
    ) -> Option<IpAddr> {
        let mut msg = AddressMessage::default();
        msg.header.family = family;
        msg.header.scope = scope;
        msg.header.index = 7;
        msg.attributes = attributes;
        match round_trip(RouteNetlinkMessage::NewAddress(msg)) {
            RouteNetlinkMessage::NewAddress(msg) => parse_address(&msg),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_links_and_addresses() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes = vec![
            LinkAttribute::Mtu(1500),
            LinkAttribute::IfName("veth1".into()),
        ];
        let veth1 = Link {
            ifindex: 7,
            name: "veth1".into(),
        };
        assert_eq!(
            link_change(&round_trip(RouteNetlinkMessage::NewLink(link.clone()))),
            Some(LinkChange::New(veth1.clone()))
        );
        assert_eq!(
            link_change(&round_trip(RouteNetlinkMessage::DelLink(link))),
            Some(LinkChange::Gone(veth1))
        );

        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            address(
                AddressFamily::Inet,
                AddressScope::Universe,
                vec![
                    AddressAttribute::Address(ip("10.0.0.9")),
                    AddressAttribute::Local(ip("10.0.0.1")),
                ]
            ),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            address(
                AddressFamily::Inet,
                AddressScope::Host,
                vec![AddressAttribute::Local(ip("127.0.0.1"))]
            ),
            None
        );
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(
            address(
                AddressFamily::Inet6,
                AddressScope::Universe,
                vec![AddressAttribute::Address(IpAddr::V6(v6))]
            ),
            Some(IpAddr::V6(v6))
        );
    }

    /// The namespace's own links and addresses, read over a real socket.
    #[test]
    fn reads_this_namespaces_links_and_addresses() {
        let mut sock = Socket::open(GROUP_LINK).unwrap();
        let links = links(&mut sock).unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        // Loopback's addresses are host-scoped.
        let addresses = addresses().unwrap();
        assert!(!addresses.iter().any(|a| a.is_loopback()), "{addresses:?}");
        // Non-blocking: draining returns (whether anything changed meanwhile or not).
        let sub = subscribe_addresses().unwrap();
        drain(&sub, &mut [0u8; 4096]);
    }
}
