//! rtnetlink, by hand: one socket, a request (or a dump) and a walk over attributes, written
//! here once for every part of Sonde that speaks it (TC filters in `clsact`, and the agent's
//! link watch, addresses and qdisc statistics) rather than pulled in as a crate.
//!
//! A socket belongs to the network namespace of the thread that opened it, whichever thread
//! uses it afterwards.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an error message: extended-ack attributes follow (`NLM_F_ACK_TLVS`).
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// A request that takes longer than this is abandoned.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// One netlink message: its type and its body (after the header).
pub type Message = (u16, Vec<u8>);

/// A received message with its header's sequence number and flags.
struct Received {
    seq: u32,
    kind: u16,
    flags: u16,
    body: Vec<u8>,
}

/// An rtnetlink socket, in the namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    /// The kernel's message with the last error answer (errors stay plain errnos, which
    /// callers match on; [`Socket::explain`] adds it for people).
    reason: Option<String>,
}

impl Socket {
    /// A socket for requests; with `groups`, also subscribed to those multicast groups.
    pub fn open(groups: u32) -> io::Result<Socket> {
        // SAFETY: plain syscall; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel's reason with its errors ("Filter kind and protocol must match existing
        // filter"), without our request echoed back. Older kernels ignore them: no harm.
        let _ = setsockopt(&fd, SOL_NETLINK, NETLINK_EXT_ACK, &1i32);
        let _ = setsockopt(&fd, SOL_NETLINK, NETLINK_CAP_ACK, &1i32);
        let sock = Socket {
            fd,
            seq: 0,
            buf: vec![0u8; 64 << 10],
            reason: None,
        };
        sock.set_timeout(RECV_TIMEOUT)?;
        if groups != 0 {
            // SAFETY: zeroed sockaddr_nl is valid; the fields the kernel reads are set.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = groups;
            // SAFETY: addr outlives the call and its size is passed.
            if unsafe {
                libc::bind(
                    sock.fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            } != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(sock)
    }

    /// How long a request or [`Socket::recv`] waits for a message.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    /// Sends `kind` with `flags` (and an ack asked for) and returns the messages of the
    /// answer; an error answer is an `io::Error` of its errno.
    pub fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<Message>> {
        self.exchange(kind, NLM_F_REQUEST | NLM_F_ACK | flags, body)
    }

    /// Sends a dump request of `kind` with `header` as its body and returns every message of
    /// the answer (multicast notifications that arrive meanwhile are left out).
    pub fn dump(&mut self, kind: u16, header: &[u8]) -> io::Result<Vec<Message>> {
        self.exchange(kind, NLM_F_REQUEST | NLM_F_DUMP, header)
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
    pub fn recv(&mut self) -> io::Result<Vec<Message>> {
        Ok(self
            .recv_raw()?
            .into_iter()
            .filter(|m| m.seq == 0)
            .map(|m| (m.kind, m.body))
            .collect())
    }

    fn exchange(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<Message>> {
        self.reason = None;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + body.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&kind.to_ne_bytes());
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(body);
        // SAFETY: zeroed sockaddr_nl is the kernel as peer.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address are valid for their lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        loop {
            for m in self.recv_raw()? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = -(u32_at(&m.body, 0) as i32);
                        // An ack: the request is done.
                        if errno == 0 {
                            return Ok(out);
                        }
                        self.reason = ext_ack_message(m.flags, &m.body);
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    _ => out.push((m.kind, m.body)),
                }
            }
        }
    }

    /// One datagram's messages.
    fn recv_raw(&mut self) -> io::Result<Vec<Received>> {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &self.buf[..n as usize];
        let mut out = Vec::new();
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32_at(msgs, 0) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let flags = u16::from_ne_bytes([msgs[6], msgs[7]]);
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            out.push(Received {
                seq: u32_at(msgs, 8),
                kind,
                flags,
                body: msgs[NLMSG_HDRLEN..len].to_vec(),
            });
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
        Ok(out)
    }
}

/// The kernel's extended-ack message of an error answer, when it gave one.
fn ext_ack_message(flags: u16, body: &[u8]) -> Option<String> {
    // errno, then the request's header (capped: no payload), then the attributes.
    let tlvs = body
        .get(4 + NLMSG_HDRLEN..)
        .filter(|_| flags & NLM_F_ACK_TLVS != 0)?;
    string_attr(tlvs, NLMSGERR_ATTR_MSG).filter(|m| !m.is_empty())
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value outlives the call and its size is passed.
    if unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates the attributes of `buf` as (type, payload).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits.
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, payload))
    })
}

/// Appends attribute `kind` with `payload`, padded.
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Starts a nested attribute; [`end_nested`] sets its length.
pub fn begin_nested(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    // NLA_F_NESTED.
    buf.extend_from_slice(&(kind | 0x8000).to_ne_bytes());
    at
}

pub fn end_nested(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap()))
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap()))
}

/// A NUL-terminated string attribute.
pub fn c_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// The string attribute `kind` of a message's attributes, when there.
pub fn string_attr(attrs_buf: &[u8], kind: u16) -> Option<String> {
    attrs(attrs_buf)
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| c_string(p))
}
