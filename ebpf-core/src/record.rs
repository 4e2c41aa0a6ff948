//! Rust mirrors of `sonde.h`: the 5-tuple, the per-probe live config, and the stats slots.

use std::borrow::Cow;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub const F_EVENTS: u32 = 1 << 0;
pub const F_STACK: u32 = 1 << 1;

pub const STAT_LOST: u32 = 0;
pub const STAT_SUPPRESSED: u32 = 1;

/// `struct sonde_netns`: a network namespace as probes record it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Netns {
    /// Never reused while the system runs; 0 on kernels that set no cookie when they make a
    /// namespace (before 5.12).
    pub cookie: u64,
    /// The namespace's inode (as `/proc/PID/ns/net` shows): reused once it is gone.
    pub inode: u32,
    pub pad: u32,
}

impl Netns {
    pub const fn new(inode: u32, cookie: u64) -> Self {
        Netns {
            cookie,
            inode,
            pad: 0,
        }
    }

    /// A namespace known by its inode only.
    pub const fn inode(inode: u32) -> Self {
        Netns::new(inode, 0)
    }
}

/// A namespace known by its inode only.
impl From<u32> for Netns {
    fn from(inode: u32) -> Self {
        Netns::inode(inode)
    }
}

const _: () = {
    assert!(size_of::<Netns>() == 16);
    assert!(offset_of!(Netns, inode) == 8);
};

// SAFETY: a plain C struct of integers (part of counter keys).
unsafe impl aya::Pod for Netns {}

/// `struct sonde_tuple`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub protocol: u8,
    pub pad: [u8; 2],
}

const _: () = {
    assert!(size_of::<Tuple>() == 40);
    assert!(offset_of!(Tuple, daddr) == 16);
    assert!(offset_of!(Tuple, sport) == 32);
    assert!(offset_of!(Tuple, dport) == 34);
    assert!(offset_of!(Tuple, family) == 36);
    assert!(offset_of!(Tuple, protocol) == 37);
};

// SAFETY: a plain C struct of integers (the flow table's key).
unsafe impl aya::Pod for Tuple {}

impl Tuple {
    fn addr(&self, raw: &[u8; 16]) -> Option<IpAddr> {
        match self.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
            _ => None,
        }
    }

    /// Source address, `None` when the packet was not IPv4 or IPv6.
    pub fn src(&self) -> Option<IpAddr> {
        self.addr(&self.saddr)
    }

    /// Destination address, `None` when the packet was not IPv4 or IPv6.
    pub fn dst(&self) -> Option<IpAddr> {
        self.addr(&self.daddr)
    }

    /// The protocol by its usual name, or its number.
    pub fn protocol_name(&self) -> Cow<'static, str> {
        match (self.protocol, self.family) {
            (6, _) => "tcp".into(),
            (17, _) => "udp".into(),
            (1, _) => "icmp".into(),
            (58, AF_INET6) => "icmpv6".into(),
            (132, _) => "sctp".into(),
            (n, _) => n.to_string().into(),
        }
    }
}

/// `struct sonde_config`: slot 0 of a probe's `probe_config` array.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelConfig {
    pub rate: u64,
    pub burst: u64,
    pub wakeup_bytes: u32,
    pub flags: u32,
    pub ns_rate: u64,
    pub ns_burst: u64,
}

const _: () = {
    assert!(size_of::<KernelConfig>() == 40);
    assert!(offset_of!(KernelConfig, wakeup_bytes) == 16);
    assert!(offset_of!(KernelConfig, flags) == 20);
    assert!(offset_of!(KernelConfig, ns_rate) == 24);
    assert!(offset_of!(KernelConfig, ns_burst) == 32);
};

/// `struct sonde_ns_bucket`: a network namespace's event budget in a probe's `ns_buckets`
/// map, and the events it had suppressed.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NsBucket {
    pub tokens_ns: u64,
    pub last_ns: u64,
    pub suppressed: u64,
}

const _: () = assert!(size_of::<NsBucket>() == 24);

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for NsBucket {}

// SAFETY: plain C struct of integers with no padding holes that matter to the kernel.
unsafe impl aya::Pod for KernelConfig {}

/// `struct sonde_params`: slot 0 of a probe's `probe_params` array, for probes that have one.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelParams(pub [u64; 4]);

const _: () = assert!(size_of::<KernelParams>() == 32);

// SAFETY: plain array of integers.
unsafe impl aya::Pod for KernelParams {}

/// Number of log2 histogram buckets (`SONDE_LOG2_SLOTS`): slot k counts values of at most
/// 2^k microseconds; slot `LOG2_SLOTS` counts what is above them all.
pub const LOG2_SLOTS: usize = 27;

/// The upper bound in seconds of log2 histogram slot `k` (`le` of its Prometheus bucket).
pub fn log2_slot_bound_seconds(k: usize) -> f64 {
    (1u64 << k) as f64 / 1e6
}

/// A probe's delivery statistics, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records the ring buffer had no room for.
    pub lost: u64,
    /// Records not emitted because of the rate limit.
    pub suppressed: u64,
}

/// Reads a record the kernel wrote into the ring buffer. `None` when it is too short, which
/// only happens if the object and its Rust mirror disagree.
///
/// Only plain data can be read this way (`aya::Pod`: every bit pattern valid); a type with
/// invalid bit patterns, such as `bool` or an enum, is refused at compile time:
///
/// ```compile_fail
/// let _: Option<bool> = ebpf_core::record::read_record(&[2u8]);
/// ```
pub fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked above; T is Pod (a plain #[repr(C)] mirror of a C struct of
    // integers), so every bit pattern is valid; read_unaligned copes with the ring buffer's
    // 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_addresses_follow_family() {
        let mut t = Tuple {
            family: AF_INET,
            protocol: 17,
            ..Default::default()
        };
        t.saddr[..4].copy_from_slice(&[198, 18, 1, 1]);
        assert_eq!(t.src(), Some("198.18.1.1".parse().unwrap()));
        assert_eq!(t.protocol_name(), "udp");
        t.family = AF_INET6;
        t.protocol = 58;
        assert_eq!(t.protocol_name(), "icmpv6");
        t.family = 0;
        assert_eq!(t.src(), None);
    }

    #[test]
    fn short_records_are_refused() {
        assert!(read_record::<Tuple>(&[0u8; 39]).is_none());
        assert!(read_record::<Tuple>(&[0u8; 40]).is_some());
    }
}
