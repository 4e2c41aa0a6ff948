//! rtnetlink replies: datagrams as the socket receives them (headers, error answers with
//! their extended ack), and link, address and qdisc messages as Sonde reads them.
#![no_main]
use ebpf_core::netlink::{parse_datagram, parse_message, RouteNetlinkMessage};
use libfuzzer_sys::fuzz_target;

/// `RTM_NEWLINK`, `RTM_DELLINK`, `RTM_NEWADDR`, `RTM_NEWQDISC`, `RTM_NEWTFILTER`.
const KINDS: [u16; 5] = [16, 17, 20, 36, 44];

fuzz_target!(|data: &[u8]| {
    let _ = parse_datagram(data);
    for kind in KINDS {
        match parse_message(kind, data) {
            Some(m @ (RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_))) => {
                let _ = sonde::netlink::link_change(&m);
            }
            Some(RouteNetlinkMessage::NewAddress(a)) => {
                let _ = sonde::netlink::parse_address(&a);
            }
            Some(RouteNetlinkMessage::NewQueueDiscipline(q)) => {
                let _ = sonde::probes::netstat::qdisc::parse_qdisc(&q);
            }
            _ => {}
        }
    }
});
