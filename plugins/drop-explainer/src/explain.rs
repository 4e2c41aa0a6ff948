//! The advice table: for a kernel drop reason (and, for netfilter, the function that dropped
//! the packet), the class of rule behind it and a sentence saying what to check.

/// What kind of thing dropped the packet; the `rule_class` label and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleClass {
    Netfilter,
    Socket,
    Neighbour,
    Checksum,
    Routing,
    Other,
}

impl RuleClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleClass::Netfilter => "netfilter",
            RuleClass::Socket => "socket",
            RuleClass::Neighbour => "neighbour",
            RuleClass::Checksum => "checksum",
            RuleClass::Routing => "routing",
            RuleClass::Other => "other",
        }
    }
}

/// The drop being explained.
#[derive(Debug, Clone, Copy)]
pub struct Drop<'a> {
    /// Drop reason without its `SKB_DROP_REASON_` prefix.
    pub reason: &'a str,
    /// Kernel function, possibly with `+0xoffset`.
    pub location: &'a str,
    pub protocol: &'a str,
    pub dport: u16,
    pub daddr: Option<std::net::IpAddr>,
    /// Whether the network namespace belongs to a pod (otherwise it is the host's).
    pub in_pod: bool,
}

const IPTABLES: &str =
    "dropped by an iptables/nftables rule in {where}; check `iptables -S` / `nft list ruleset` there";
const TCP_WINDOW: &str = "a TCP segment outside the receive window (already received, or beyond \
    the window), usually a retransmission or a duplicate: harmless alone, a sign of loss or \
    reordering on the path when frequent";
const TCP_ACK: &str = "a TCP segment acknowledging data never sent or long acknowledged: a stale \
    or confused peer, or a middlebox rewriting sequence numbers";
const TCP_PAWS: &str = "a TCP segment failed the timestamp (PAWS) check: an old duplicate, or \
    peers behind NAT reusing ports with different clocks";
const TCP_OFO: &str = "TCP dropped out-of-order data under memory pressure: the receiver in \
    {pod} is short of buffer space";
const TCP_STATE: &str = "a TCP segment that does not fit the connection's state (unexpected \
    flags, a SYN on an open connection, data after close)";
const TCP_AUTH: &str = "TCP authentication (MD5 signature or TCP-AO) failed on port {dport}: \
    the peers' keys disagree";
const CHECKSUM: &str = "bad {proto} checksum: corruption on the path, or a checksum offload \
    problem on a NIC or veth; check `ethtool -k` offload settings";
const NEIGH_GONE: &str = "the neighbour entry of the next hop went away while sending; check \
    `ip neigh` in {where}";
const BAD_SOURCE: &str = "the source address is not acceptable here (local, loopback or \
    martian, arriving from outside): a spoofed or misrouted packet";
const NO_ROUTE: &str = "no route to {daddr} in {where}; check `ip route get {daddr}` there";
const MALFORMED: &str = "a malformed packet: shorter than its headers say, or with invalid headers";
const QDISC: &str = "the egress queueing discipline dropped it (queue full or over its limit); \
    check `tc -s qdisc` in {where}";
const TC: &str = "a tc filter or eBPF program (for example a CNI's network policy) dropped it; \
    check `tc filter show` in {where}";
const DEVICE: &str = "the network device could not take it (ring full, device down, or a tap \
    device's filter)";
const FRAGMENTS: &str = "IP fragment reassembly failed (a duplicate, late or lost fragment): \
    avoid fragmentation by lowering the MTU or MSS";
const DEFAULT: &str = "dropped in the kernel at {location} ({reason}); turn on the packet_drop \
    probe's `stack` option to see the path";

/// The class of rule behind `reason` and the advice template (placeholders `{where}`, `{pod}`,
/// `{proto}`, `{dport}`, `{daddr}`, `{reason}`, `{location}`).
fn table(reason: &str) -> (RuleClass, &'static str) {
    use RuleClass::*;
    match reason {
        "NETFILTER_DROP" => (Netfilter, IPTABLES),

        "NO_SOCKET" => (Socket, "nothing listens on {proto} port {dport} in {pod}"),
        "SOCKET_RCVBUFF" => (
            Socket,
            "the receive buffer of the socket on {proto} port {dport} is full: the application \
             in {pod} reads too slowly; read faster or raise SO_RCVBUF (net.core.rmem_max)",
        ),
        "SOCKET_BACKLOG" => (
            Socket,
            "the backlog of the socket on {proto} port {dport} is full while the application \
             holds it: the application in {pod} cannot keep up",
        ),
        "SOCKET_CLOSE" => (
            Socket,
            "the socket was closed with the packet still unread in {pod}",
        ),
        "SOCKET_FILTER" => (
            Socket,
            "a socket filter (a BPF program attached to the socket) in {pod} rejected the packet",
        ),
        "PROTO_MEM" => (
            Socket,
            "the node is over its {proto} memory limit (net.ipv4.tcp_mem / udp_mem): socket \
             buffers across the node are too full",
        ),
        "TCP_LISTEN_OVERFLOW" => (
            Socket,
            "the listen queue of tcp port {dport} in {pod} is full: the application accepts \
             connections too slowly; accept faster or raise its backlog (net.core.somaxconn)",
        ),
        "TCP_ZEROWINDOW" => (
            Socket,
            "the receive window is zero: the application in {pod} does not read its socket on \
             tcp port {dport}",
        ),
        "TCP_OLD_DATA"
        | "TCP_OLD_SEQUENCE"
        | "TCP_INVALID_SEQUENCE"
        | "TCP_INVALID_END_SEQUENCE"
        | "TCP_OVERWINDOW" => (Socket, TCP_WINDOW),
        "TCP_INVALID_ACK_SEQUENCE" | "TCP_OLD_ACK" | "TCP_TOO_OLD_ACK" | "TCP_ACK_UNSENT_DATA" => {
            (Socket, TCP_ACK)
        }
        "TCP_OFOMERGE" | "TCP_OFO_QUEUE_PRUNE" | "TCP_OFO_DROP" => (Socket, TCP_OFO),
        "TCP_FLAGS" | "TCP_INVALID_SYN" | "TCP_RESET" | "TCP_CLOSE" | "TCP_ABORT_ON_DATA"
        | "TCP_FASTOPEN" => (Socket, TCP_STATE),
        "TCP_MINTTL" => (
            Socket,
            "the segment's TTL is below the socket's minimum (IP_MINTTL)",
        ),
        "PACKET_SOCK_ERROR" => (
            Socket,
            "a packet socket (a capture tool, for example) could not take the packet",
        ),
        r if r.starts_with("TCP_RFC7323_") => (Socket, TCP_PAWS),
        r if r.starts_with("TCP_MD5") || r.starts_with("TCP_AO") || r == "TCP_AUTH_HDR" => {
            (Socket, TCP_AUTH)
        }
        r if r.starts_with("UNIX_") => (
            Socket,
            "a Unix socket dropped the message (its peer disconnected, or out-of-band data was \
             skipped)",
        ),

        "TCP_CSUM" | "UDP_CSUM" | "IP_CSUM" | "ICMP_CSUM" | "SKB_CSUM" => (Checksum, CHECKSUM),

        "NEIGH_FAILED" => (
            Neighbour,
            "neighbour resolution (ARP/NDP) of the next hop failed: the gateway or peer does \
             not answer; check `ip neigh` in {where}",
        ),
        "NEIGH_QUEUEFULL" => (
            Neighbour,
            "too many packets waited for neighbour resolution (ARP/NDP) of the next hop; check \
             `ip neigh` in {where} and whether the next hop answers",
        ),
        "NEIGH_CREATEFAIL" => (
            Neighbour,
            "no neighbour entry could be created: the neighbour table may be full \
             (net.ipv4.neigh.default.gc_thresh3)",
        ),
        r if r.starts_with("NEIGH_") => (Neighbour, NEIGH_GONE),
        r if r.starts_with("IPV6_NDISC_") => (
            Neighbour,
            "an invalid IPv6 neighbour discovery message was ignored",
        ),

        "OTHERHOST" => (
            Routing,
            "the frame was addressed to another host's MAC address: a stale ARP or bridge FDB \
             entry upstream, or flooding on the bridge",
        ),
        "IP_OUTNOROUTES" | "IP_INNOROUTES" => (Routing, NO_ROUTE),
        "IP_RPFILTER" => (
            Routing,
            "reverse-path filtering: the source address does not route back through the \
             interface the packet came in on; check net.ipv4.conf.*.rp_filter and the routes in \
             {where}",
        ),
        "IP_INADDRERRORS" | "IP_INVALID_DEST" => (
            Routing,
            "the destination {daddr} is not acceptable here (broadcast, multicast, or an address \
             this namespace does not receive for)",
        ),
        "IP_LOCAL_SOURCE" | "IP_INVALID_SOURCE" | "IP_LOCALNET" | "MAC_INVALID_SOURCE" => {
            (Routing, BAD_SOURCE)
        }
        "UNICAST_IN_L2_MULTICAST" => (
            Routing,
            "an IP unicast packet arrived in a link-layer multicast or broadcast frame",
        ),
        "XFRM_POLICY" => (
            Routing,
            "an IPsec (xfrm) policy rejected the packet; check `ip xfrm policy` in {where}",
        ),
        "IPV6DISABLED" => (
            Routing,
            "IPv6 is disabled on the interface (net.ipv6.conf.*.disable_ipv6) in {where}",
        ),
        "PKT_TOO_BIG" => (
            Routing,
            "the packet exceeds the path MTU and may not be fragmented: check the MTUs along the \
             path (encapsulation lowers them) and that ICMP 'fragmentation needed' gets through",
        ),

        "IP_NOPROTO" => (
            Other,
            "no handler for IP protocol {proto} in {where}: its kernel module is not loaded, or \
             nothing uses it",
        ),
        "PKT_TOO_SMALL" | "HDR_TRUNC" | "IP_INHDR" | "INVALID_PROTO" | "DEV_HDR"
        | "IPV6_BAD_EXTHDR" => (Other, MALFORMED),
        "QDISC_DROP" | "QDISC_OVERLIMIT" | "QDISC_CONGESTED" | "CAKE_FLOOD"
        | "DUALPI2_STEP_DROP" => (Other, QDISC),
        r if r.starts_with("FQ_") => (Other, QDISC),
        "CPU_BACKLOG" => (
            Other,
            "the CPU's input backlog was full (net.core.netdev_max_backlog): packets arrive \
             faster than the node processes them",
        ),
        "TC_INGRESS" | "TC_EGRESS" | "TC_COOKIE_ERROR" | "TC_CHAIN_NOTFOUND"
        | "TC_RECLASSIFY_LOOP" => (Other, TC),
        "XDP" => (Other, "an XDP program dropped it"),
        "BPF_CGROUP_EGRESS" => (
            Other,
            "a cgroup eBPF program dropped it on egress (for example a network policy attached \
             to the pod's cgroup)",
        ),
        "SECURITY_HOOK" => (Other, "a security module (LSM) refused the packet"),
        "NOMEM" | "PFMEMALLOC" => (Other, "the kernel was short of memory"),
        "FULL_RING" | "DEV_READY" | "TAP_FILTER" | "TAP_TXFILTER" | "NO_TX_TARGET" => {
            (Other, DEVICE)
        }
        "DUP_FRAG" | "FRAG_REASM_TIMEOUT" | "FRAG_TOO_FAR" => (Other, FRAGMENTS),
        "QUEUE_PURGE" => (
            Other,
            "a socket or device queue was purged as it closed: normal when a socket closes \
             with data unread",
        ),
        "NOT_SPECIFIED" => (
            Other,
            "the kernel gave no reason; `location` says where ({location}), and the packet_drop \
             probe's `stack` option shows the path",
        ),
        _ => (Other, DEFAULT),
    }
}

/// The class of rule behind a drop reason.
pub fn rule_class(reason: &str) -> RuleClass {
    table(reason).0
}

/// The advice sentence for a drop.
pub fn advice(d: &Drop<'_>) -> String {
    let function = d.location.split('+').next().unwrap_or(d.location);
    let template = match d.reason {
        "NETFILTER_DROP" => netfilter(function),
        "NO_SOCKET" if !matches!(d.protocol, "tcp" | "udp" | "sctp") => {
            "no socket in {pod} takes these {proto} packets"
        }
        reason => table(reason).1,
    };
    let (place, pod) = if d.in_pod {
        ("this pod's network namespace", "this pod")
    } else {
        ("the host network namespace", "the host network namespace")
    };
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            rest = &rest[open..];
            break;
        };
        match &after[..close] {
            "where" => out.push_str(place),
            "pod" => out.push_str(pod),
            "proto" => out.push_str(d.protocol),
            "dport" => out.push_str(&d.dport.to_string()),
            "daddr" => match d.daddr {
                Some(a) => out.push_str(&a.to_string()),
                None => out.push_str("the destination"),
            },
            "reason" => out.push_str(d.reason),
            "location" => out.push_str(d.location),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Netfilter drops, refined by the hook that dropped the packet.
fn netfilter(function: &str) -> &'static str {
    if function.starts_with("nf_conntrack") || function.starts_with("nf_ct_") {
        "dropped by connection tracking in {where} (a packet in an invalid state, or a full \
         table); check `conntrack -S` there and net.netfilter.nf_conntrack_max"
    } else if function == "ebt_do_table" {
        "dropped by an ebtables rule on a bridge in {where}; check `ebtables -L` there"
    } else if function == "arpt_do_table" {
        "dropped by an arptables rule in {where}; check `arptables -L` there"
    } else if function.starts_with("br_nf") {
        "dropped by bridge netfilter (br_netfilter) in {where}; check `iptables -S` / `nft list \
         ruleset` there and net.bridge.bridge-nf-call-iptables"
    } else {
        // nft_do_chain, ipt_do_table, ip6t_do_table, nf_hook_slow and the rest.
        IPTABLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop<'a>(reason: &'a str, location: &'a str) -> Drop<'a> {
        Drop {
            reason,
            location,
            protocol: "udp",
            dport: 9000,
            daddr: Some("198.18.0.2".parse().unwrap()),
            in_pod: true,
        }
    }

    #[test]
    fn netfilter_drops_point_at_the_ruleset() {
        for location in [
            "nft_do_chain",
            "ipt_do_table",
            "ip6t_do_table+0x2c4",
            "nf_hook_slow",
        ] {
            assert_eq!(
                advice(&drop("NETFILTER_DROP", location)),
                "dropped by an iptables/nftables rule in this pod's network namespace; check \
                 `iptables -S` / `nft list ruleset` there"
            );
        }
        assert!(advice(&drop("NETFILTER_DROP", "nf_conntrack_in")).contains("conntrack -S"));
        assert!(advice(&drop("NETFILTER_DROP", "ebt_do_table")).contains("ebtables"));
        let host = Drop {
            in_pod: false,
            ..drop("NETFILTER_DROP", "nft_do_chain")
        };
        assert!(advice(&host).contains("in the host network namespace"));
        assert_eq!(rule_class("NETFILTER_DROP"), RuleClass::Netfilter);
    }

    #[test]
    fn no_socket_names_the_port() {
        assert_eq!(
            advice(&drop("NO_SOCKET", "__udp4_lib_rcv")),
            "nothing listens on udp port 9000 in this pod"
        );
        let tcp = Drop {
            protocol: "tcp",
            dport: 8080,
            in_pod: false,
            ..drop("NO_SOCKET", "tcp_v4_rcv")
        };
        assert_eq!(
            advice(&tcp),
            "nothing listens on tcp port 8080 in the host network namespace"
        );
        let icmp = Drop {
            protocol: "icmp",
            ..drop("NO_SOCKET", "icmp_rcv")
        };
        assert_eq!(
            advice(&icmp),
            "no socket in this pod takes these icmp packets"
        );
        assert_eq!(rule_class("NO_SOCKET"), RuleClass::Socket);
    }

    #[test]
    fn classes_of_the_common_reasons() {
        use RuleClass::*;
        let cases = [
            ("TCP_CSUM", Checksum),
            ("UDP_CSUM", Checksum),
            ("SOCKET_RCVBUFF", Socket),
            ("TCP_LISTEN_OVERFLOW", Socket),
            ("TCP_INVALID_SEQUENCE", Socket),
            ("TCP_OLD_DATA", Socket),
            ("TCP_RFC7323_PAWS", Socket),
            ("TCP_MD5FAILURE", Socket),
            ("NEIGH_FAILED", Neighbour),
            ("NEIGH_QUEUEFULL", Neighbour),
            ("NEIGH_HH_FILLFAIL", Neighbour),
            ("OTHERHOST", Routing),
            ("IP_OUTNOROUTES", Routing),
            ("IP_RPFILTER", Routing),
            ("PKT_TOO_SMALL", Other),
            ("IP_NOPROTO", Other),
            ("QDISC_DROP", Other),
            ("NOT_SPECIFIED", Other),
            ("SOMETHING_NEW_IN_7_0", Other),
        ];
        for (reason, class) in cases {
            assert_eq!(rule_class(reason), class, "{reason}");
        }
    }

    #[test]
    fn every_advice_is_a_filled_in_sentence() {
        let reasons = [
            "SOCKET_RCVBUFF",
            "TCP_CSUM",
            "NEIGH_FAILED",
            "OTHERHOST",
            "PKT_TOO_SMALL",
            "IP_NOPROTO",
            "TCP_INVALID_SEQUENCE",
            "TCP_OLD_DATA",
            "IP_INNOROUTES",
            "CPU_BACKLOG",
            "NOT_SPECIFIED",
            "SOMETHING_NEW",
        ];
        for reason in reasons {
            let a = advice(&drop(reason, "some_function"));
            assert!(!a.contains('{') && !a.contains('}'), "{reason}: {a}");
            assert!(!a.contains("  "), "{reason}: {a}");
        }
        assert!(advice(&drop("SOCKET_RCVBUFF", "x")).contains("receive buffer"));
        assert!(advice(&drop("NEIGH_FAILED", "x")).contains("neighbour resolution"));
        assert!(advice(&drop("IP_INNOROUTES", "x")).contains("ip route get 198.18.0.2"));
        assert!(advice(&drop("SOMETHING_NEW", "kfree_x")).contains("at kfree_x (SOMETHING_NEW)"));
        assert!(advice(&drop("TCP_CSUM", "x")).starts_with("bad udp checksum"));
    }
}
