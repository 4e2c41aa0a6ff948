/* packet_drop: records shared by packet_drop.bpf.c and packet_drop.rs. */
#ifndef PACKET_DROP_H
#define PACKET_DROP_H
#include "sonde.h"

/* Key of the in-kernel `drops` counter. */
struct packet_drop_key {
	__u32 netns;
	__u32 reason; /* enum skb_drop_reason of the running kernel */
};

struct packet_drop_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns */
	__u64 location;     /* address of the function that dropped the packet */
	__u32 netns;
	__u32 reason;
	__s32 stack_id; /* id in `stacks`, negative when not collected */
	__u32 pad;
	struct sonde_tuple tuple;
};

#endif
