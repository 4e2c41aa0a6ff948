// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* tcp_retrans: every TCP segment retransmission (tp_btf tcp/tcp_retransmit_skb), counted
 * per network namespace in the kernel, with rate-limited per-event detail. */
#include "sonde.bpf.h"
#include "tcp_retrans.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcp_retrans_key);
	__type(value, __u64);
} retransmits SEC(".maps");

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retrans, const struct sock *sk, const struct sk_buff *skb)
{
	struct tcp_retrans_key key = {};
	struct tcp_retrans_event *e;
	struct sonde_config *cfg;

	key.netns = sonde_sk_netns(sk);
	sonde_count(&retransmits, &key);

	e = sonde_event_start(sizeof(*e), key.netns.inum, &cfg);
	if (!e)
		return 0;
	e->netns = key.netns;
	e->state = sk->__sk_common.skc_state;
	sonde_sk_tuple(sk, &e->tuple);
	sonde_submit(e, cfg);
	return 0;
}
