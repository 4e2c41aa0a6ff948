/* netdev_latency: records shared by netdev_latency.bpf.c and netdev_latency.rs. */
#ifndef NETDEV_LATENCY_H
#define NETDEV_LATENCY_H
#include "sonde.h"

#define NETDEV_IFNAMSIZ 16

/* Which part of the transmit path (netdev_key.kind is 2 * stage, + 1 for the sum). */
#define NETDEV_STAGE_QUEUE 0 /* net_dev_queue -> net_dev_start_xmit: time in the qdisc */
#define NETDEV_STAGE_XMIT 1  /* net_dev_start_xmit -> net_dev_xmit: time in the driver */

/* What a `netdevs` counter slot counts. */
#define NETDEV_KIND_QUEUE_BUCKET 0 /* qdisc times in log2 slot `slot` */
#define NETDEV_KIND_QUEUE_SUM 1    /* sum of qdisc times in nanoseconds (slot 0) */
#define NETDEV_KIND_XMIT_BUCKET 2  /* driver times in log2 slot `slot` */
#define NETDEV_KIND_XMIT_SUM 3     /* sum of driver times in nanoseconds (slot 0) */

/* probe_params values. */
#define NETDEV_PARAM_QUEUE_NS 0 /* event for qdisc times at least this long; 0 = every packet */
#define NETDEV_PARAM_XMIT_NS 1  /* event for driver times at least this long; 0 = every packet */
#define NETDEV_PARAM_SAMPLE_EVERY 2 /* each stage of a packet is timed with a chance of one in this many; 0 or 1 = every packet */

/* An interface: its network namespace and index there. */
struct netdev_iface {
	struct sonde_netns netns;
	__u32 ifindex;
	__u32 pad;
};

/* Key of the in-kernel `netdevs` counter. */
struct netdev_key {
	struct netdev_iface iface;
	__u8 kind;
	__u8 slot;
	__u8 pad[6];
};

/* Value of the `ifnames` table: an interface's name, written when its first counter slot is. */
struct netdev_name {
	char name[NETDEV_IFNAMSIZ];
};

struct netdev_event {
	__u64 timestamp_ns;
	__u64 duration_ns;
	struct sonde_netns netns;
	__u32 ifindex;
	__u32 len; /* bytes of the packet */
	__u8 stage;
	__u8 pad[3];
	char name[NETDEV_IFNAMSIZ];
};

#endif
