// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* stack_latency: time received IPv4 packets spend in the kernel's IP layer, per stage, as
 * log2 histograms in the kernel (KubeSkoop's "kernel latency"); packets slower than a
 * threshold in one stage become events with their 5-tuple and namespace.
 *
 *   ip_rcv_core ──▶ ip_local_deliver          receive_local    (PREROUTING, routing)
 *   ip_rcv_core ──▶ ip_forward ──▶ ip_output  receive_forward, forward (FORWARD)
 *
 * A packet is stamped on return from ip_rcv_core, where both receive paths meet (ip_rcv, and
 * ip_list_rcv for packets that arrive in lists from GRO, which is how most NICs deliver
 * them); its return value is the packet from there on (a shared skb is cloned in it, when a
 * packet socket such as tcpdump's also holds the packet). Stamps are keyed by skb address in
 * an LRU hash and deleted at the end of the last stage or where the kernel drops the packet
 * (kfree_skb), so that an skb reused for another packet never inherits one.
 *
 * Every function hook has two programs: fentry/fexit where the kernel attaches BPF
 * trampolines (arguments are BTF-typed), kprobe/kretprobe elsewhere (arguments are numbers,
 * read with BPF_CORE_READ, so the shared code below reads that way for both). */
#include "sonde.bpf.h"
#include "stack_latency.h"

SONDE_PARAMS

/* Where a stamped packet is: past ip_rcv_core, or past ip_forward. */
#define STAMPED_RECEIVED 0
#define STAMPED_FORWARDED 1

/* The functions that end a stage. */
#define AT_LOCAL_DELIVER 0
#define AT_FORWARD 1
#define AT_OUTPUT 2

struct stamp {
	__u64 ns;
	__u32 where;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct stamp);
} stamps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STACK_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} stages SEC(".maps");

static __always_inline void add(__u32 index, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stages, &index);

	if (v)
		*v += n;
}

/* Counts `ns` in stage `stage` of packet `skb` and makes it an event when slow. */
static __always_inline void stage_done(struct sk_buff *skb, __u32 stage, __u64 ns)
{
	struct stack_latency_event *e;
	struct sonde_config *cfg;
	struct net_device *dev;
	struct sonde_netns netns;

	add(STACK_INDEX(stage, STACK_KIND_BUCKET, sonde_log2_slot(ns)), 1);
	add(STACK_INDEX(stage, STACK_KIND_SUM, 0), ns);
	if (ns < sonde_param(STACK_PARAM_SLOW_NS))
		return;
	netns = sonde_skb_netns_core_read(skb);
	e = sonde_event_start(sizeof(*e), netns.inum, &cfg);
	if (!e)
		return;
	e->duration_ns = ns;
	e->stage = stage;
	e->netns = netns;
	dev = BPF_CORE_READ(skb, dev);
	e->ifindex = dev ? BPF_CORE_READ(dev, ifindex) : 0;
	sonde_skb_tuple_core_read(skb, &e->tuple);
	sonde_submit(e, cfg);
}

static __always_inline int received(struct sk_buff *skb)
{
	struct stamp s = { .ns = bpf_ktime_get_ns(), .where = STAMPED_RECEIVED };
	__u64 key = (__u64)skb;

	if (skb)
		bpf_map_update_elem(&stamps, &key, &s, BPF_ANY);
	return 0;
}

/* The packet reached function `at`: ends the stage it was in, and stamps it again where
 * another follows (ip_forward). A packet not stamped where `at` expects it (sent by this
 * host, or stamped before the probe attached) is not timed. */
static __always_inline int reached(struct sk_buff *skb, __u32 at)
{
	__u64 key = (__u64)skb, now = bpf_ktime_get_ns(), ns;
	struct stamp *s = bpf_map_lookup_elem(&stamps, &key);
	__u32 stage;

	if (!s)
		return 0;
	ns = now - s->ns;
	if (s->where == STAMPED_RECEIVED && at == AT_LOCAL_DELIVER) {
		stage = STACK_STAGE_RECEIVE_LOCAL;
		bpf_map_delete_elem(&stamps, &key);
	} else if (s->where == STAMPED_RECEIVED && at == AT_FORWARD) {
		stage = STACK_STAGE_RECEIVE_FORWARD;
		s->ns = now;
		s->where = STAMPED_FORWARDED;
	} else if (s->where == STAMPED_FORWARDED && at == AT_OUTPUT) {
		stage = STACK_STAGE_FORWARD;
		bpf_map_delete_elem(&stamps, &key);
	} else {
		return 0;
	}
	if ((__s64)ns >= 0)
		stage_done(skb, stage, ns);
	return 0;
}

SEC("fexit/ip_rcv_core")
int BPF_PROG(ip_rcv_core_exit, struct sk_buff *skb, struct net *net, struct sk_buff *ret)
{
	return received(ret);
}

SEC("fentry/ip_local_deliver")
int BPF_PROG(ip_local_deliver_entry, struct sk_buff *skb)
{
	return reached(skb, AT_LOCAL_DELIVER);
}

SEC("fentry/ip_forward")
int BPF_PROG(ip_forward_entry, struct sk_buff *skb)
{
	return reached(skb, AT_FORWARD);
}

SEC("fentry/ip_output")
int BPF_PROG(ip_output_entry, struct net *net, struct sock *sk, struct sk_buff *skb)
{
	return reached(skb, AT_OUTPUT);
}

SEC("kretprobe/ip_rcv_core")
int BPF_KRETPROBE(ip_rcv_core_kretprobe, struct sk_buff *ret)
{
	return received(ret);
}

SEC("kprobe/ip_local_deliver")
int BPF_KPROBE(ip_local_deliver_kprobe, struct sk_buff *skb)
{
	return reached(skb, AT_LOCAL_DELIVER);
}

SEC("kprobe/ip_forward")
int BPF_KPROBE(ip_forward_kprobe, struct sk_buff *skb)
{
	return reached(skb, AT_FORWARD);
}

SEC("kprobe/ip_output")
int BPF_KPROBE(ip_output_kprobe, struct net *net, struct sock *sk, struct sk_buff *skb)
{
	return reached(skb, AT_OUTPUT);
}

/* A packet the kernel dropped loses its stamp. Only the first argument is read, which every
 * kernel's kfree_skb passes. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb)
{
	__u64 key = (__u64)skb;

	bpf_map_delete_elem(&stamps, &key);
	return 0;
}
