/* io_latency: records shared by io_latency.bpf.c and io_latency.rs. */
#ifndef IO_LATENCY_H
#define IO_LATENCY_H
#include "sonde.h"

/* The request's operation (the `op` label). */
#define IO_OP_READ 0
#define IO_OP_WRITE 1
#define IO_OP_OTHER 2 /* flush, discard, write zeroes, zone and driver operations */

/* What an `ios` counter slot counts (io_latency_key.kind). */
#define IO_KIND_BUCKET 0 /* requests whose latency falls in log2 slot `slot` */
#define IO_KIND_SUM 1    /* sum of latencies in nanoseconds (slot 0) */

/* probe_params values. */
#define IO_PARAM_SLOW_NS 0 /* event for requests at least this slow; 0 = every request */

/* Key of the in-kernel `ios` counter. */
struct io_latency_key {
	__u32 dev; /* the disk's dev_t as the kernel packs it: major << 20 | minor */
	__u8 op;
	__u8 kind;
	__u8 slot;
	__u8 pad;
};

struct io_latency_event {
	__u64 timestamp_ns;
	__u64 duration_ns;
	__u64 sector;
	__u32 dev;
	__u32 bytes; /* bytes the completion covered */
	__s32 error; /* the completion's blk_status_t, 0 when it succeeded */
	__u8 op;
	__u8 pad[3];
};

#endif
