/* stack_latency: records shared by stack_latency.bpf.c and stack_latency.rs. */
#ifndef STACK_LATENCY_H
#define STACK_LATENCY_H
#include "sonde.h"

/* The stages a received IPv4 packet is timed through (the `stage` label), each bounded by two
 * kernel functions. */
#define STACK_STAGE_RECEIVE_LOCAL 0   /* ip_rcv_core -> ip_local_deliver: PREROUTING, routing */
#define STACK_STAGE_RECEIVE_FORWARD 1 /* ip_rcv_core -> ip_forward: PREROUTING, routing */
#define STACK_STAGE_FORWARD 2         /* ip_forward -> ip_output: FORWARD */
#define STACK_STAGES 3

/* What a `stages` counter slot counts. */
#define STACK_KIND_BUCKET 0 /* packets whose stage time falls in log2 slot `slot` */
#define STACK_KIND_SUM 1    /* sum of stage times in nanoseconds (slot 0) */

/* The `stages` counters are a per-CPU array (a packet's path is too hot for a hash): slot
 * `slot` of kind `kind` for stage `stage` is at STACK_INDEX(stage, kind, slot). */
#define STACK_SLOTS (SONDE_LOG2_SLOTS + 1)
#define STACK_INDEX(stage, kind, slot) (((stage) * 2 + (kind)) * STACK_SLOTS + (slot))
#define STACK_COUNTERS (STACK_STAGES * 2 * STACK_SLOTS)

/* probe_params values. */
#define STACK_PARAM_SLOW_NS 0 /* event for packets at least this long in one stage; 0 = all */

/* A packet that spent at least the threshold in one stage. */
struct stack_latency_event {
	__u64 timestamp_ns;
	__u64 duration_ns;
	struct sonde_tuple tuple;
	struct sonde_netns netns; /* the namespace the packet was received in */
	__u32 ifindex;            /* the interface it was received on */
	__u8 stage;
	__u8 pad[3];
};

#endif
