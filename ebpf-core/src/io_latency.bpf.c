// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* io_latency: block request latency, from block/block_rq_issue (handed to the driver) to
 * block/block_rq_complete, per disk and operation as log2 histograms in the kernel; requests
 * slower than a threshold (an "IO hang") become events.
 *
 * Issue times are keyed by request address in an LRU hash, deleted at the first completion
 * (a request completed in parts is timed to its first part); requests issued before the probe
 * attached are not timed. */
#include "sonde.bpf.h"
#include "io_latency.h"

#define REQ_OP_MASK_ 0xff
#define MINORBITS_ 20

SONDE_PARAMS

/* Before Linux 5.17 a request named its disk itself; the queue has named it since. */
struct request___old {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

/* The whole disk's dev_t of a request, as the tracepoint itself names the device. A pointer
 * read with BPF_CORE_READ is a plain number to the verifier (5.10 refused `disk->major` after
 * the old-layout read: "R1 invalid mem access"), so the disk's fields are read the same way. */
static __always_inline __u32 request_dev(struct request *rq)
{
	struct request___old *old = (void *)rq;
	struct gendisk *disk;

	if (bpf_core_field_exists(old->rq_disk))
		disk = BPF_CORE_READ(old, rq_disk);
	else
		disk = rq->q->disk;
	if (!disk)
		return 0;
	return (__u32)BPF_CORE_READ(disk, major) << MINORBITS_ |
	       (__u32)BPF_CORE_READ(disk, first_minor);
}

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct io_latency_key);
	__type(value, __u64);
} ios SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} inflight SEC(".maps");

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	__u64 key = (__u64)rq, now = bpf_ktime_get_ns();

	bpf_map_update_elem(&inflight, &key, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 key = (__u64)rq, now = bpf_ktime_get_ns(), *issued, ns, slow_ns;
	struct io_latency_key k = {};
	struct io_latency_event *e;
	struct sonde_config *cfg;
	__u32 op;

	issued = bpf_map_lookup_elem(&inflight, &key);
	if (!issued)
		return 0;
	ns = now - *issued;
	bpf_map_delete_elem(&inflight, &key);
	if ((__s64)ns < 0)
		return 0;
	k.dev = request_dev(rq);
	op = rq->cmd_flags & REQ_OP_MASK_;
	k.op = op == REQ_OP_READ ? IO_OP_READ : op == REQ_OP_WRITE ? IO_OP_WRITE : IO_OP_OTHER;
	k.kind = IO_KIND_BUCKET;
	k.slot = sonde_log2_slot(ns);
	sonde_count(&ios, &k);
	k.kind = IO_KIND_SUM;
	k.slot = 0;
	sonde_add(&ios, &k, ns);
	slow_ns = sonde_param(IO_PARAM_SLOW_NS);
	if (ns < slow_ns)
		return 0;
	e = sonde_event_start(sizeof(*e), 0, &cfg);
	if (!e)
		return 0;
	e->duration_ns = ns;
	e->sector = rq->__sector;
	e->dev = k.dev;
	e->bytes = nr_bytes;
	e->error = error;
	e->op = k.op;
	sonde_submit(e, cfg);
	return 0;
}
