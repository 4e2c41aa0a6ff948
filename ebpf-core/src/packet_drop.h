/* packet_drop: records shared by packet_drop.bpf.c and packet_drop.rs. */
#ifndef PACKET_DROP_H
#define PACKET_DROP_H
#include "sonde.h"

/* The reason of a drop on a kernel whose kfree_skb passes none (before Linux 5.17). */
#define PACKET_DROP_NO_REASON 0xffffffff

/* Key of the in-kernel `drops` counter. */
struct packet_drop_key {
	struct sonde_netns netns;
	__u32 reason; /* enum skb_drop_reason of the running kernel, or PACKET_DROP_NO_REASON */
	__u32 pad;
};

struct packet_drop_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns */
	__u64 location;     /* address of the function that dropped the packet */
	struct sonde_netns netns;
	__u32 reason;
	__s32 stack_id; /* id in `stacks`, negative when not collected */
	struct sonde_tuple tuple;
};

#endif
