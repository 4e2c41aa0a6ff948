//! Mirror of `virtio_net.h`: the control-command latency histogram key, the interface name
//! table, the event record of a slow or failed command, and the names of the commands.

use std::borrow::Cow;
use std::mem::{offset_of, size_of};

use crate::{Hook, ProbeSpec, Requirement};

/// The function that sends a control command, by its names across kernels, newest first:
/// `virtnet_send_command_reply` since Linux 6.10 (`virtnet_send_command` is inlined into it
/// in Debian's 6.12), `virtnet_send_command` before. Both are in the virtio_net module.
const SEND_COMMAND: &[&str] = &["virtnet_send_command_reply", "virtnet_send_command"];

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "virtio_net",
    description:
        "virtio-net control command latency per interface and command; slow or failed ones",
    // kprobes only: the functions are in the virtio_net module, whose (split) BTF aya cannot
    // load for fentry (see virtio_net.bpf.c).
    hooks: &[
        Hook::kprobe("virtnet_cmd_entry", SEND_COMMAND, false),
        Hook::kprobe("virtnet_cmd_return", SEND_COMMAND, true),
    ],
    requires: &[&[
        Requirement::field("net_device", "ifindex"),
        Requirement::field("net_device", "name"),
    ]],
    counter_map: "commands",
    object: aya::include_bytes_aligned!("virtio_net.bpf.o"),
};

/// The kernel table of interface names (ifindex -> `struct virtio_net_name`).
pub const NAMES_MAP: &str = "ifnames";

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;
pub const KIND_ERROR: u8 = 2;

/// Index in `probe_params` of the slow-command threshold in nanoseconds.
pub const PARAM_SLOW_NS: usize = 0;

/// The commands of a class: (number, name).
pub type Commands = &'static [(u8, &'static str)];

/// Command classes and commands, numbered as in include/uapi/linux/virtio_net.h
/// (`VIRTIO_NET_CTRL_<CLASS>` and `VIRTIO_NET_CTRL_<CLASS>_<COMMAND>`), with the names the
/// `class` and `command` labels give them.
pub const CLASSES: &[(u8, &str, Commands)] = &[
    (
        0, // VIRTIO_NET_CTRL_RX
        "rx",
        &[
            (0, "promisc"),
            (1, "allmulti"),
            (2, "alluni"),
            (3, "nomulti"),
            (4, "nouni"),
            (5, "nobcast"),
        ],
    ),
    (1, "mac", &[(0, "table_set"), (1, "addr_set")]), // VIRTIO_NET_CTRL_MAC
    (2, "vlan", &[(0, "add"), (1, "del")]),           // VIRTIO_NET_CTRL_VLAN
    (3, "announce", &[(0, "ack")]),                   // VIRTIO_NET_CTRL_ANNOUNCE
    (
        4, // VIRTIO_NET_CTRL_MQ
        "mq",
        &[(0, "vq_pairs_set"), (1, "rss_config"), (2, "hash_config")],
    ),
    (5, "guest_offloads", &[(0, "set")]), // VIRTIO_NET_CTRL_GUEST_OFFLOADS
    (
        6, // VIRTIO_NET_CTRL_NOTF_COAL
        "notf_coal",
        &[(0, "tx_set"), (1, "rx_set"), (2, "vq_set"), (3, "vq_get")],
    ),
    (8, "stats", &[(0, "query"), (1, "get")]), // VIRTIO_NET_CTRL_STATS
];

pub const CLASS_MAC: u8 = 1;
pub const MAC_ADDR_SET: u8 = 1;

/// The `class` label: the class's name, or its number.
pub fn class_name(class: u8) -> Cow<'static, str> {
    match CLASSES.iter().find(|(c, _, _)| *c == class) {
        Some(&(_, name, _)) => Cow::Borrowed(name),
        None => Cow::Owned(class.to_string()),
    }
}

/// The `command` label: the command's name within its class, or its number.
pub fn command_name(class: u8, cmd: u8) -> Cow<'static, str> {
    let name = CLASSES
        .iter()
        .find(|(c, _, _)| *c == class)
        .and_then(|(_, _, cmds)| cmds.iter().find(|(n, _)| *n == cmd));
    match name {
        Some(&(_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(cmd.to_string()),
    }
}

/// `struct virtio_net_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub ifindex: u32,
    pub class: u8,
    pub cmd: u8,
    pub kind: u8,
    pub slot: u8,
}

/// `struct virtio_net_name`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Name(pub [u8; 16]);

/// `struct virtio_net_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub duration_ns: u64,
    pub ifindex: u32,
    pub class: u8,
    pub cmd: u8,
    pub ok: u8,
    pub pad: u8,
    pub name: [u8; 16],
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 8);
    assert!(offset_of!(Key, class) == 4);
    assert!(offset_of!(Key, cmd) == 5);
    assert!(offset_of!(Key, kind) == 6);
    assert!(offset_of!(Key, slot) == 7);
    assert!(size_of::<Name>() == 16);
    assert!(size_of::<Record>() == 40);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, duration_ns) == 8);
    assert!(offset_of!(Record, ifindex) == 16);
    assert!(offset_of!(Record, class) == 20);
    assert!(offset_of!(Record, cmd) == 21);
    assert!(offset_of!(Record, ok) == 22);
    assert!(offset_of!(Record, name) == 24);
};

// SAFETY: plain C structs of integers.
unsafe impl aya::Pod for Key {}
unsafe impl aya::Pod for Name {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_as_the_uapi_header_names_them() {
        assert_eq!(class_name(0), "rx");
        assert_eq!(command_name(0, 0), "promisc");
        assert_eq!(command_name(0, 5), "nobcast");
        assert_eq!(class_name(CLASS_MAC), "mac");
        assert_eq!(command_name(CLASS_MAC, MAC_ADDR_SET), "addr_set");
        assert_eq!(command_name(1, 0), "table_set");
        assert_eq!(command_name(2, 1), "del");
        assert_eq!(command_name(3, 0), "ack");
        assert_eq!(command_name(4, 0), "vq_pairs_set");
        assert_eq!(command_name(4, 2), "hash_config");
        assert_eq!(class_name(5), "guest_offloads");
        assert_eq!(command_name(5, 0), "set");
        assert_eq!(command_name(6, 3), "vq_get");
        assert_eq!(class_name(8), "stats");
        assert_eq!(command_name(8, 1), "get");
    }

    #[test]
    fn unknown_numbers_are_named_by_their_value() {
        assert_eq!(class_name(7), "7");
        assert_eq!(class_name(200), "200");
        assert_eq!(command_name(7, 3), "3");
        assert_eq!(command_name(CLASS_MAC, 9), "9");
        // Every class and every command within it has one name.
        for (i, (c, _, cmds)) in CLASSES.iter().enumerate() {
            assert!(CLASSES[i + 1..].iter().all(|(d, _, _)| d != c));
            for (j, (n, _)) in cmds.iter().enumerate() {
                assert!(cmds[j + 1..].iter().all(|(m, _)| m != n));
            }
        }
    }
}
