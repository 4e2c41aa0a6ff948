// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* packet_drop: every packet the kernel frees as dropped (tp_btf skb/kfree_skb), counted per
 * network namespace and drop reason in the kernel, with rate-limited per-event detail.
 *
 * kfree_skb's arguments grew over releases, and a tp_btf program may not read an argument
 * its kernel does not pass, so there is one program per signature; the agent loads the one
 * the running kernel's tracepoint matches:
 *   packet_drop          (skb, location, reason, rx_sk)  Linux 6.11+, "net: add rx_sk to
 *                        trace_kfree_skb"
 *   packet_drop_reason   (skb, location, reason)         Linux 5.17+, commit c504e5c2f964
 *                        ("net: skb: introduce kfree_skb_reason()")
 *   packet_drop_noreason (skb, location)                 before: no reason to read, counted
 *                        as PACKET_DROP_NO_REASON (shown as NOT_SPECIFIED) */
#include "sonde.bpf.h"
#include "packet_drop.h"

#define STACK_DEPTH 64

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct packet_drop_key);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

/* Whether `reason` says the packet was consumed (freed after use), not dropped. Kernels
 * whose enum has SKB_CONSUMED may report consumed packets through kfree_skb with it; those
 * without it (6.1 and older) have consume_skb's own tracepoint and pass drops only. */
static __always_inline bool packet_drop_consumed(__u32 reason)
{
	return bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
	       reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED);
}

static __always_inline int packet_drop_count(void *ctx, struct sk_buff *skb, void *location,
					     __u32 reason, struct sock *rx_sk)
{
	struct packet_drop_key key = {};
	struct packet_drop_event *e;
	struct sonde_config *cfg;

	if (!skb)
		return 0;
	key.netns = sonde_skb_netns(skb, rx_sk);
	key.reason = reason;
	sonde_count(&drops, &key);

	e = sonde_event_start(sizeof(*e), key.netns.inum, &cfg);
	if (!e)
		return 0;
	e->location = (__u64)location;
	e->netns = key.netns;
	e->reason = reason;
	/* tp_btf adds two frames of tracing trampoline on top of the dropping function. */
	e->stack_id = (cfg->flags & SONDE_F_STACK) ? bpf_get_stackid(ctx, &stacks, 2) : -1;
	sonde_skb_tuple(skb, &e->tuple);
	sonde_submit(e, cfg);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(packet_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	if (packet_drop_consumed(reason))
		return 0;
	return packet_drop_count(ctx, skb, location, reason, rx_sk);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(packet_drop_reason, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	if (packet_drop_consumed(reason))
		return 0;
	return packet_drop_count(ctx, skb, location, reason, NULL);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(packet_drop_noreason, struct sk_buff *skb, void *location)
{
	return packet_drop_count(ctx, skb, location, PACKET_DROP_NO_REASON, NULL);
}
