// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* packet_drop: every packet the kernel frees as dropped (tp_btf skb/kfree_skb), counted per
 * network namespace and drop reason in the kernel, with rate-limited per-event detail. */
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

SEC("tp_btf/kfree_skb")
int BPF_PROG(packet_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	struct packet_drop_key key = {};
	struct packet_drop_event *e;
	struct sonde_config *cfg;

	/* Freed after use, not dropped (older kernels report it through kfree_skb too). */
	if (!skb || reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
		return 0;

	key.netns = sonde_skb_netns(skb, rx_sk);
	key.reason = reason;
	sonde_count(&drops, &key);

	e = sonde_event_start(sizeof(*e), &cfg);
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
