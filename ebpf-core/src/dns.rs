//! Mirror of `dns.h`: the counter key (latency histogram and rcodes per client address) and
//! the table of queries waiting for their response.

use std::mem::{offset_of, size_of};

use crate::{Hook, ProbeSpec, TcDirection};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "dns",
    description: "DNS over UDP and TCP port 53 through the node's host-side interfaces: query latency and responses by rcode per pod, timeouts",
    hooks: &[
        Hook::tc("dns_ingress", TcDirection::Ingress),
        Hook::tc("dns_egress", TcDirection::Egress),
    ],
    requires: &[],
    counter_map: "dns_counts",
    object: aya::include_bytes_aligned!("dns.bpf.o"),
};

/// The table of queries waiting for a response.
pub const PENDING_MAP: &str = "pending";

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;
pub const KIND_RCODE: u8 = 2;

/// `struct dns_count_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CountKey {
    pub client: [u8; 16],
    pub family: u8,
    pub kind: u8,
    pub slot: u8,
    pub pad: u8,
}

/// `struct dns_query_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub client: [u8; 16],
    pub client_port: u16,
    pub id: u16,
    pub family: u8,
    pub protocol: u8,
    pub pad: [u8; 2],
}

/// `struct dns_query`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Query {
    pub start_ns: u64,
    pub server: [u8; 16],
    pub server_port: u16,
    pub pad: [u8; 6],
}

const _: () = {
    assert!(size_of::<CountKey>() == 20);
    assert!(offset_of!(CountKey, family) == 16);
    assert!(offset_of!(CountKey, slot) == 18);
    assert!(size_of::<QueryKey>() == 24);
    assert!(offset_of!(QueryKey, client_port) == 16);
    assert!(offset_of!(QueryKey, id) == 18);
    assert!(offset_of!(QueryKey, family) == 20);
    assert!(size_of::<Query>() == 32);
    assert!(offset_of!(Query, server) == 8);
    assert!(offset_of!(Query, server_port) == 24);
};

// SAFETY: plain C structs of integers.
unsafe impl aya::Pod for CountKey {}
unsafe impl aya::Pod for QueryKey {}
unsafe impl aya::Pod for Query {}

/// The rcode's name (RFC 1035, 2136): `NOERROR`, `SERVFAIL`, `NXDOMAIN`, ...
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "OTHER",
    }
}
