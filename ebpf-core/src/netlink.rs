//! rtnetlink for every part of Sonde that speaks it (TC filters in `clsact`, and the agent's
//! link watch, addresses and qdisc statistics): netlink-sys's socket, with the messages built
//! and parsed by netlink-packet-route. Ours are the exchange on top (a request and its ack,
//! a dump up to its end, notifications apart), the receive timeout, the kernel's
//! extended-ack message kept for error texts, and a reading of link, address and tc messages
//! that leaves out an attribute the crate cannot parse rather than the whole message.
//!
//! A socket belongs to the network namespace of the thread that opened it, whichever thread
//! uses it afterwards.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    parse_string, DecodeError, Emitable, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator, Parseable, ParseableParametrized,
    NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkHeader, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcHeader, TcMessage};
pub use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};

/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// The extended-ack attribute with the kernel's message (`NLMSGERR_ATTR_MSG`).
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A request that takes longer than this is abandoned.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// An rtnetlink socket, in the namespace of the thread that opened it.
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
    /// The kernel's message with the last error answer (errors stay plain errnos, which
    /// callers match on; [`Socket::explain`] adds it for people).
    reason: Option<String>,
}

impl Socket {
    /// A socket for requests; with `groups`, also subscribed to those multicast groups.
    pub fn open(groups: u32) -> io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)?;
        // The kernel's reason with its errors ("Filter kind and protocol must match existing
        // filter"), without our request echoed back. Older kernels ignore them: no harm.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        if groups != 0 {
            sock.bind(&SocketAddr::new(0, groups))?;
        }
        let sock = Socket {
            sock,
            seq: 0,
            buf: vec![0u8; 64 << 10],
            reason: None,
        };
        sock.set_timeout(RECV_TIMEOUT)?;
        Ok(sock)
    }

    /// How long a request or [`Socket::recv`] waits for a message (`SO_RCVTIMEO`, which
    /// netlink-sys does not set).
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `message` with `flags` (and an ack asked for) and returns the messages of the
    /// answer; an error answer is an `io::Error` of its errno.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Sends `message` as a dump request and returns every message of the answer (multicast
    /// notifications that arrive meanwhile are left out).
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// `e` with the kernel's message for the last error answer, for people; ENODEV (the
    /// interface went) stays as it is, for callers that say nothing then.
    pub fn explain(&self, e: io::Error) -> io::Error {
        match (&self.reason, e.raw_os_error()) {
            (Some(reason), Some(errno)) if errno != libc::ENODEV => {
                io::Error::new(e.kind(), format!("{e} ({reason})"))
            }
            _ => e,
        }
    }

    /// The next batch of multicast notifications; an error of kind `WouldBlock` or
    /// `TimedOut` when none came within the timeout.
    pub fn recv(&mut self) -> io::Result<Vec<RouteNetlinkMessage>> {
        Ok(self
            .recv_datagram()?
            .into_iter()
            .filter(|m| m.seq == 0)
            .filter_map(|m| match m.body {
                Body::Message(message) => Some(message),
                _ => None,
            })
            .collect())
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.reason = None;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut req = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut req);
        // Port 0: the kernel.
        self.sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
        let mut out = Vec::new();
        loop {
            for m in self.recv_datagram()? {
                if m.seq != seq {
                    continue;
                }
                match m.body {
                    // The end of a dump, or the ack of a request.
                    Body::Done | Body::Ack => return Ok(out),
                    Body::Error { errno, reason } => {
                        self.reason = reason;
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Body::Message(message) => out.push(message),
                    Body::Unread => {}
                }
            }
        }
    }

    /// One datagram's messages.
    fn recv_datagram(&mut self) -> io::Result<Vec<Received>> {
        let mut buf = &mut self.buf[..];
        let n = self.sock.recv(&mut buf, 0)?;
        parse_datagram(&self.buf[..n.min(self.buf.len())])
    }
}

/// A message of a datagram, with its header's sequence number (0 for a notification).
#[derive(Debug)]
pub struct Received {
    pub seq: u32,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// `NLMSG_DONE`: a dump ends.
    Done,
    /// An `NLMSG_ERROR` without error: a request is done.
    Ack,
    /// An error answer: its errno, and the kernel's message when it gave one.
    Error {
        errno: i32,
        reason: Option<String>,
    },
    Message(RouteNetlinkMessage),
    /// A message of a type we do not read, or one that cannot be parsed.
    Unread,
}

/// The messages of one datagram as the socket receives it.
pub fn parse_datagram(mut datagram: &[u8]) -> io::Result<Vec<Received>> {
    let mut out = Vec::new();
    while datagram.len() >= NLMSG_HDRLEN {
        let msg = NetlinkBuffer::new_checked(datagram).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("truncated netlink message: {e}"),
            )
        })?;
        let body = match msg.message_type() {
            NLMSG_DONE => Body::Done,
            NLMSG_ERROR => error_body(msg.flags(), msg.payload()),
            kind => parse_message(kind, msg.payload()).map_or(Body::Unread, Body::Message),
        };
        out.push(Received {
            seq: msg.sequence_number(),
            body,
        });
        let len = msg.length() as usize;
        datagram = &datagram[align4(len).min(datagram.len())..];
    }
    Ok(out)
}

/// An `NLMSG_ERROR` message: an ack, or an error with the kernel's extended-ack message.
fn error_body(flags: u16, payload: &[u8]) -> Body {
    let Ok(error) = ErrorBuffer::new_checked(&payload).and_then(|b| ErrorMessage::parse(&b)) else {
        return Body::Unread;
    };
    match error.code {
        None => Body::Ack,
        Some(code) => Body::Error {
            errno: code.get().checked_neg().unwrap_or(i32::MAX),
            reason: ext_ack_message(flags, &error.header),
        },
    }
}

/// The kernel's extended-ack message of an error answer, when it gave one: netlink-packet-core
/// hands the rest of an error message over unread (the request's header, or the whole
/// request when not capped, then attributes).
fn ext_ack_message(flags: u16, rest: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        NetlinkBuffer::new_checked(rest).ok()?.length() as usize
    };
    NlasIterator::new(rest.get(align4(request_len)..)?)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
        .filter(|m| !m.is_empty())
}

/// The message of type `kind` (`RTM_*`) in `payload`, as netlink-packet-route parses it. The
/// crate fails a whole message for one attribute it cannot parse (one a newer kernel changed,
/// a driver's odd one); the link, address and tc messages Sonde reads are then read
/// attribute by attribute, without those.
pub fn parse_message(kind: u16, payload: &[u8]) -> Option<RouteNetlinkMessage> {
    match RouteNetlinkMessage::parse_with_param(payload, kind) {
        Ok(message) => Some(message),
        Err(e) => {
            let message = parse_tolerant(kind, payload);
            tracing::debug!(kind, error = %e, recovered = message.is_some(), "an rtnetlink message the crate cannot parse");
            message
        }
    }
}

fn parse_tolerant(kind: u16, payload: &[u8]) -> Option<RouteNetlinkMessage> {
    match kind {
        libc::RTM_NEWLINK | libc::RTM_DELLINK => {
            let mut m = LinkMessage::default();
            m.header = LinkHeader::parse(payload).ok()?;
            let family = m.header.interface_family;
            let nlas = payload.get(m.header.buffer_len()..)?;
            m.attributes = attributes(nlas, |nla| LinkAttribute::parse_with_param(nla, family));
            Some(if kind == libc::RTM_NEWLINK {
                RouteNetlinkMessage::NewLink(m)
            } else {
                RouteNetlinkMessage::DelLink(m)
            })
        }
        libc::RTM_NEWADDR => {
            let mut m = AddressMessage::default();
            m.header = AddressHeader::parse(payload).ok()?;
            let nlas = payload.get(m.header.buffer_len()..)?;
            m.attributes = attributes(nlas, |nla| AddressAttribute::parse(nla));
            Some(RouteNetlinkMessage::NewAddress(m))
        }
        libc::RTM_NEWQDISC | libc::RTM_NEWTFILTER => {
            let header = TcHeader::parse(payload).ok()?;
            let nlas = payload.get(header.buffer_len()..)?;
            // Options and statistics are parsed by the kind that precedes them.
            let mut tc_kind = String::new();
            let attributes = attributes(nlas, |nla| {
                let attribute = TcAttribute::parse_with_param(nla, tc_kind.as_str());
                if let Ok(TcAttribute::Kind(k)) = &attribute {
                    tc_kind.clone_from(k);
                }
                attribute
            });
            let m = TcMessage::from_parts(header, attributes);
            Some(if kind == libc::RTM_NEWQDISC {
                RouteNetlinkMessage::NewQueueDiscipline(m)
            } else {
                RouteNetlinkMessage::NewTrafficFilter(m)
            })
        }
        _ => None,
    }
}

/// The attributes of `nlas` that `parse` reads; a malformed length ends the list.
fn attributes<A>(
    nlas: &[u8],
    mut parse: impl FnMut(&NlaBuffer<&[u8]>) -> Result<A, DecodeError>,
) -> Vec<A> {
    NlasIterator::new(nlas)
        .map_while(Result::ok)
        .filter_map(|nla| parse(&nla).ok())
        .collect()
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DefaultNla;
    use netlink_packet_route::link::LinkAttribute;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let nla = DefaultNla::new(kind, value.to_vec());
        let mut buf = vec![0u8; nla.buffer_len()];
        nla.emit(&mut buf);
        buf
    }

    fn header(len: usize, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&(len as u32).to_ne_bytes());
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    /// An error answer as the kernel sends it with `NETLINK_EXT_ACK` and `NETLINK_CAP_ACK`:
    /// errno, our request's header, and the message attribute.
    #[test]
    fn errors_carry_the_kernels_message() {
        let mut body = (-libc::EINVAL).to_ne_bytes().to_vec();
        body.extend(header(64, libc::RTM_NEWTFILTER, NLM_F_REQUEST, 7));
        body.extend(nla(
            NLMSGERR_ATTR_MSG,
            b"Filter kind and protocol must match\0",
        ));
        let mut datagram = header(
            NLMSG_HDRLEN + body.len(),
            NLMSG_ERROR,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            7,
        );
        datagram.extend(body);
        // An ack follows, for another request.
        datagram.extend(header(NLMSG_HDRLEN + 20, NLMSG_ERROR, NLM_F_CAPPED, 8));
        datagram.extend(0i32.to_ne_bytes());
        datagram.extend(header(16, libc::RTM_GETLINK, NLM_F_REQUEST, 8));
        let got = parse_datagram(&datagram).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].seq, 7);
        match &got[0].body {
            Body::Error { errno, reason } => {
                assert_eq!(*errno, libc::EINVAL);
                assert_eq!(
                    reason.as_deref(),
                    Some("Filter kind and protocol must match")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(got[1].body, Body::Ack));
        // A length past the datagram's end.
        assert!(parse_datagram(&datagram[..40]).is_err());
    }

    /// A link with one attribute the crate rejects (an `IFLA_MTU` of two bytes) still gives
    /// its index and name.
    #[test]
    fn a_bad_attribute_loses_only_itself() {
        let mut payload = vec![0u8; 16];
        payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
        // IFLA_MTU, IFLA_IFNAME.
        payload.extend(nla(4, &[0, 5]));
        payload.extend(nla(3, b"veth1\0"));
        assert!(RouteNetlinkMessage::parse_with_param(&payload[..], libc::RTM_NEWLINK).is_err());
        let Some(RouteNetlinkMessage::NewLink(link)) = parse_message(libc::RTM_NEWLINK, &payload)
        else {
            panic!("not a link");
        };
        assert_eq!(link.header.index, 7);
        assert_eq!(link.attributes, [LinkAttribute::IfName("veth1".into())]);
        assert!(parse_message(libc::RTM_NEWLINK, &payload[..8]).is_none());
    }
}
