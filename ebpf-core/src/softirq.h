/* softirq: records shared by softirq.bpf.c and softirq.rs. */
#ifndef SOFTIRQ_H
#define SOFTIRQ_H
#include "sonde.h"

/* The softirq vectors this probe times, numbered as in the kernel's enum (include/linux/interrupt.h,
 * stable since 2.6). */
#define SOFTIRQ_NET_TX 2
#define SOFTIRQ_NET_RX 3

/* What a `softirqs` counter slot counts (softirq_key.kind). */
#define SOFTIRQ_KIND_DELAY_BUCKET 0 /* raise -> entry delays in log2 slot `slot` */
#define SOFTIRQ_KIND_DELAY_SUM 1    /* sum of delays in nanoseconds (slot 0) */
#define SOFTIRQ_KIND_RUN_BUCKET 2   /* entry -> exit run times in log2 slot `slot` */
#define SOFTIRQ_KIND_RUN_SUM 3      /* sum of run times in nanoseconds (slot 0) */

/* Which measure an event reports (softirq_event.stage). */
#define SOFTIRQ_STAGE_DELAY 0
#define SOFTIRQ_STAGE_RUN 1

/* probe_params values. */
#define SOFTIRQ_PARAM_DELAY_NS 0 /* event for delays at least this long; 0 = every one */
#define SOFTIRQ_PARAM_RUN_NS 1   /* event for run times at least this long; 0 = every one */

/* The `softirqs` counters are a per-CPU array (cheaper than a hash on a path this hot):
 * slot `slot` of kind `kind` for vector `vec` is at SOFTIRQ_INDEX(vec, kind, slot). */
#define SOFTIRQ_SLOTS (SONDE_LOG2_SLOTS + 1)
#define SOFTIRQ_INDEX(vec, kind, slot) ((((vec) & 1) * 4 + (kind)) * SOFTIRQ_SLOTS + (slot))
#define SOFTIRQ_COUNTERS (2 * 4 * SOFTIRQ_SLOTS)

/* A counter's meaning, as the agent decodes an index of `softirqs`. */
struct softirq_key {
	__u8 vec;
	__u8 kind;
	__u8 slot;
	__u8 pad;
};

struct softirq_event {
	__u64 timestamp_ns;
	__u64 duration_ns;
	__u32 cpu;
	__u8 vec;
	__u8 stage;
	__u8 pad[2];
};

#endif
