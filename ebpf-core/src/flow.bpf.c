// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* flow: packets and bytes per 5-tuple, counted by TC programs on the node's host-side
 * interfaces (the node ends of pods' veths), IPv4 and IPv6. The agent attaches both programs
 * to every interface it watches and lists those interfaces in `watched`. A packet that goes
 * from one pod to another crosses two watched interfaces (in through the first, out through
 * the second): it is counted once, at the first, so `flow_egress` skips packets that entered
 * the node through a watched interface. */
#include "sonde.bpf.h"
#include "sonde_tc.bpf.h"
#include "flow.h"

/* Sized by the agent at load time (tableSize in the probe's config). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sonde_tuple);
	__type(value, struct flow_row);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_COUNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} flow_counts SEC(".maps");

static __always_inline void flow_count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&flow_counts, &slot);
	if (v)
		*v += 1;
}

/* Reads the 5-tuple of an Ethernet frame; -1 when it is not IP. */
static __always_inline int flow_tuple(struct __sk_buff *skb, struct sonde_tuple *t)
{
	__u32 l4;

	if (sonde_tc_ip(skb, t, &l4))
		return -1;
	if (l4 && (t->protocol == IPPROTO_TCP_ || t->protocol == IPPROTO_UDP_)) {
		__be16 ports[2];
		if (sonde_tc_load(skb, l4, ports, sizeof(ports)) == 0) {
			t->sport = bpf_ntohs(ports[0]);
			t->dport = bpf_ntohs(ports[1]);
		}
	}
	return 0;
}

static __always_inline void flow_account(struct __sk_buff *skb)
{
	struct sonde_tuple t = {};
	struct flow_row *row, fresh = {};
	__u64 now = bpf_ktime_get_ns(), segs = skb->gso_segs;

	if (flow_tuple(skb, &t)) {
		flow_count(FLOW_COUNT_UNPARSED);
		return;
	}
	if (segs == 0)
		segs = 1;
	row = bpf_map_lookup_elem(&flows, &t);
	if (!row) {
		fresh.first_ns = now;
		if (bpf_map_update_elem(&flows, &t, &fresh, BPF_NOEXIST) == 0)
			flow_count(FLOW_COUNT_INSERTED);
		row = bpf_map_lookup_elem(&flows, &t);
		if (!row)
			return;
	}
	__sync_fetch_and_add(&row->packets, segs);
	__sync_fetch_and_add(&row->bytes, skb->len > SONDE_ETH_HLEN ? skb->len - SONDE_ETH_HLEN : 0);
	row->last_ns = now;
	row->ifindex = skb->ifindex;
}

/* Into the node from a pod (or whatever is behind the interface). */
SEC("classifier")
int flow_ingress(struct __sk_buff *skb)
{
	flow_account(skb);
	return TCX_NEXT;
}

/* Out of the node to a pod: counted unless it came in through a watched interface. */
SEC("classifier")
int flow_egress(struct __sk_buff *skb)
{
	if (!sonde_tc_seen(skb))
		flow_account(skb);
	return TCX_NEXT;
}
