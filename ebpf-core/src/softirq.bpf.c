// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* softirq: how long NET_RX and NET_TX softirqs wait between being raised and running
 * (irq/softirq_raise -> irq/softirq_entry on the same CPU: raising marks the softirq pending
 * on the raising CPU) and how long they run (softirq_entry -> softirq_exit). Both go into
 * log2 histograms per vector in the kernel; waits or runs above their thresholds become events.
 *
 * A softirq raised again while already pending keeps its first raise time, so the delay is
 * from the first raise the run serves. Softirqs do not nest on a CPU, so one timestamp per
 * CPU and vector is enough. */
#include "sonde.bpf.h"
#include "softirq.h"

SONDE_PARAMS

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOFTIRQ_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} softirqs SEC(".maps");

/* Per CPU, indexed by vector: when it was raised (0 = not pending) and when its run began. */
struct softirq_times {
	__u64 raised[2];
	__u64 entered[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_times);
} times SEC(".maps");

static __always_inline struct softirq_times *cpu_times(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&times, &zero);
}

static __always_inline void counter_add(__u32 index, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&softirqs, &index);
	if (v)
		*v += n;
}

static __always_inline void observe(__u8 vec, __u8 stage, __u64 ns)
{
	struct softirq_event *e;
	struct sonde_config *cfg;
	__u8 bucket = stage == SOFTIRQ_STAGE_DELAY ? SOFTIRQ_KIND_DELAY_BUCKET : SOFTIRQ_KIND_RUN_BUCKET;

	counter_add(SOFTIRQ_INDEX(vec, bucket, sonde_log2_slot(ns)), 1);
	counter_add(SOFTIRQ_INDEX(vec, bucket + 1, 0), ns); /* the sum */
	if (ns < sonde_param(stage == SOFTIRQ_STAGE_DELAY ? SOFTIRQ_PARAM_DELAY_NS : SOFTIRQ_PARAM_RUN_NS))
		return;
	e = sonde_event_start(sizeof(*e), 0, &cfg);
	if (!e)
		return;
	e->duration_ns = ns;
	e->cpu = bpf_get_smp_processor_id();
	e->vec = vec;
	e->stage = stage;
	sonde_submit(e, cfg);
}

SEC("tp_btf/softirq_raise")
int BPF_PROG(softirq_raise, unsigned int vec)
{
	struct softirq_times *t;

	if (vec != SOFTIRQ_NET_TX && vec != SOFTIRQ_NET_RX)
		return 0;
	t = cpu_times();
	if (t && !t->raised[vec & 1])
		t->raised[vec & 1] = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry, unsigned int vec)
{
	struct softirq_times *t;
	__u64 now, raised;

	if (vec != SOFTIRQ_NET_TX && vec != SOFTIRQ_NET_RX)
		return 0;
	t = cpu_times();
	if (!t)
		return 0;
	now = bpf_ktime_get_ns();
	raised = t->raised[vec & 1];
	t->raised[vec & 1] = 0;
	t->entered[vec & 1] = now;
	/* Raised before the probe attached, or by a path that skips the tracepoint. */
	if (raised && raised <= now)
		observe(vec, SOFTIRQ_STAGE_DELAY, now - raised);
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit, unsigned int vec)
{
	struct softirq_times *t;
	__u64 now, entered;

	if (vec != SOFTIRQ_NET_TX && vec != SOFTIRQ_NET_RX)
		return 0;
	t = cpu_times();
	if (!t)
		return 0;
	entered = t->entered[vec & 1];
	if (!entered)
		return 0;
	t->entered[vec & 1] = 0;
	now = bpf_ktime_get_ns();
	observe(vec, SOFTIRQ_STAGE_RUN, now - entered);
	return 0;
}
