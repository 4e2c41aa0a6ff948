// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* tcp_reset: TCP resets sent (tp_btf tcp/tcp_send_reset) and received
 * (tp_btf tcp/tcp_receive_reset), counted per network namespace and direction in the kernel,
 * with rate-limited per-event detail. */
#include "sonde.bpf.h"
#include "tcp_reset.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcp_reset_key);
	__type(value, __u64);
} resets SEC(".maps");

/* Counts and reports one reset; exactly one of sk and skb is non-NULL. */
static __always_inline void record(__u32 netns, const struct sock *sk, const struct sk_buff *skb,
				   __u32 direction)
{
	struct tcp_reset_key key = {};
	struct tcp_reset_event *e;
	struct sonde_config *cfg;

	key.netns = netns;
	key.direction = direction;
	sonde_count(&resets, &key);

	e = sonde_event_start(sizeof(*e), &cfg);
	if (!e)
		return;
	e->netns = key.netns;
	e->direction = direction;
	if (sk) {
		e->state = sk->__sk_common.skc_state;
		sonde_sk_tuple(sk, &e->tuple);
		/* A received reset travels from the peer to this socket. */
		if (direction == TCP_RESET_RECEIVED)
			sonde_tuple_reverse(&e->tuple);
	} else if (skb) {
		/* No socket: the reset answers the segment in skb, so it travels back. */
		sonde_skb_tuple(skb, &e->tuple);
		sonde_tuple_reverse(&e->tuple);
	}
	sonde_submit(e, cfg);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	/* The tracepoint's arguments may each be NULL (BTF marks them so). */
	if (sk)
		record(sonde_sk_netns(sk), sk, NULL, TCP_RESET_SENT);
	else if (skb)
		record(sonde_skb_netns(skb, NULL), NULL, skb, TCP_RESET_SENT);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_receive_reset, struct sock *sk)
{
	if (sk)
		record(sonde_sk_netns(sk), sk, NULL, TCP_RESET_RECEIVED);
	return 0;
}
