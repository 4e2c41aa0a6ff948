/* virtio_net: records shared by virtio_net.bpf.c and virtio_net.rs. */
#ifndef VIRTIO_NET_H
#define VIRTIO_NET_H
#include "sonde.h"

#define VIRTIO_NET_IFNAMSIZ 16

/* What a `commands` counter slot counts (virtio_net_key.kind). */
#define VIRTIO_NET_KIND_BUCKET 0 /* commands whose latency falls in log2 slot `slot` */
#define VIRTIO_NET_KIND_SUM 1    /* sum of latencies in nanoseconds (slot 0) */
#define VIRTIO_NET_KIND_ERROR 2  /* commands the device did not acknowledge (slot 0) */

/* probe_params values. */
#define VIRTIO_NET_PARAM_SLOW_NS 0 /* event for commands at least this slow; 0 = every command */

/* Key of the in-kernel `commands` counter: the interface, and the command's class and number
 * as include/uapi/linux/virtio_net.h numbers them (VIRTIO_NET_CTRL_*). */
struct virtio_net_key {
	__u32 ifindex;
	__u8 class;
	__u8 cmd;
	__u8 kind;
	__u8 slot;
};

/* Value of the `ifnames` table (key: ifindex): an interface's name, written at each command. */
struct virtio_net_name {
	char name[VIRTIO_NET_IFNAMSIZ];
};

struct virtio_net_event {
	__u64 timestamp_ns;
	__u64 duration_ns;
	__u32 ifindex;
	__u8 class;
	__u8 cmd;
	__u8 ok; /* 1: the device acknowledged the command (VIRTIO_NET_OK) */
	__u8 pad;
	char name[VIRTIO_NET_IFNAMSIZ];
};

#endif
