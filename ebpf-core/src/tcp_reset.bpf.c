// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* tcp_reset: TCP resets sent (tp_btf tcp/tcp_send_reset) and received
 * (tp_btf tcp/tcp_receive_reset), counted per network namespace and direction in the kernel,
 * with rate-limited per-event detail.
 *
 * Before Linux 6.10, tcp_v4_send_reset and tcp_v6_send_reset fire tcp_send_reset only for a
 * full socket: a reset answering a packet no socket owns (a connect to a closed port) never
 * shows there. Linux 6.10 fires it for every reset they send, commit 19822a980e19 ("trace:
 * tcp: fully support trace_tcp_send_reset"), and in the same release gave the tracepoint a
 * third argument, the reset's reason, commit b533fb9cf4f7 ("rstreason: make it work in trace
 * world"). So where tcp_send_reset passes fewer than 3 arguments the agent also attaches the
 * kprobes on tcp_v4_send_reset and tcp_v6_send_reset below, which count the calls without a
 * socket; the tracepoint counts those with a full socket, so no reset is counted twice. (Those
 * of a time-wait or request socket are seen by neither there.) */
#include "sonde.bpf.h"
#include "tcp_reset.h"

/* The RST bit of a TCP header's flags byte (byte 13: CWR ECE URG ACK PSH RST SYN FIN). */
#define TCP_FLAGS_BYTE 13
#define TCP_FLAG_RST 0x04

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcp_reset_key);
	__type(value, __u64);
} resets SEC(".maps");

/* Counts one reset and starts its event record, when one is due (NULL otherwise). */
static __always_inline struct tcp_reset_event *count(struct sonde_netns netns, __u32 direction,
						     struct sonde_config **cfg)
{
	struct tcp_reset_key key = {};
	struct tcp_reset_event *e;

	key.netns = netns;
	key.direction = direction;
	sonde_count(&resets, &key);

	e = sonde_event_start(sizeof(*e), netns.inum, cfg);
	if (!e)
		return NULL;
	e->netns = netns;
	e->direction = direction;
	return e;
}

/* A reset a socket sent or received. */
static __always_inline void record_sk(const struct sock *sk, __u32 direction)
{
	struct sonde_config *cfg;
	struct tcp_reset_event *e = count(sonde_sk_netns(sk), direction, &cfg);

	if (!e)
		return;
	e->state = sk->__sk_common.skc_state;
	sonde_sk_tuple(sk, &e->tuple);
	/* A received reset travels from the peer to this socket. */
	if (direction == TCP_RESET_RECEIVED)
		sonde_tuple_reverse(&e->tuple);
	sonde_submit(e, cfg);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	struct sonde_config *cfg;
	struct tcp_reset_event *e;

	/* The tracepoint's arguments may each be NULL (BTF marks them so). */
	if (sk) {
		record_sk(sk, TCP_RESET_SENT);
	} else if (skb) {
		e = count(sonde_skb_netns(skb, NULL), TCP_RESET_SENT, &cfg);
		if (!e)
			return 0;
		/* No socket: the reset answers the segment in skb, so it travels back. */
		sonde_skb_tuple(skb, &e->tuple);
		sonde_tuple_reverse(&e->tuple);
		sonde_submit(e, cfg);
	}
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_receive_reset, struct sock *sk)
{
	if (sk)
		record_sk(sk, TCP_RESET_RECEIVED);
	return 0;
}

/* tcp_v4_send_reset or tcp_v6_send_reset(sk, skb, ...) called without a socket (kernels
 * before 6.10, see above), as the tracepoint program's skb case; kprobe arguments are read
 * with BPF_CORE_READ. The kernel sends nothing in answer to a reset: it returns before
 * anything else, so such calls are not counted. The functions' other early returns are not
 * mirrored: a packet without a local route (v4) or to a non-local IPv6 address (anycast), and
 * a TCP-MD5 signed segment whose key cannot be found. */
static __always_inline int record_no_socket(const struct sock *sk, const struct sk_buff *skb)
{
	struct sonde_config *cfg;
	struct tcp_reset_event *e;
	const unsigned char *head;
	__u8 flags;

	if (sk || !skb)
		return 0;
	head = BPF_CORE_READ(skb, head);
	if (bpf_probe_read_kernel(&flags, sizeof(flags),
				  head + BPF_CORE_READ(skb, transport_header) + TCP_FLAGS_BYTE) ||
	    (flags & TCP_FLAG_RST))
		return 0;
	e = count(sonde_skb_netns_core_read(skb), TCP_RESET_SENT, &cfg);
	if (!e)
		return 0;
	sonde_skb_tuple_core_read(skb, &e->tuple);
	sonde_tuple_reverse(&e->tuple);
	sonde_submit(e, cfg);
	return 0;
}

SEC("kprobe/tcp_v4_send_reset")
int BPF_KPROBE(tcp_v4_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	return record_no_socket(sk, skb);
}

SEC("kprobe/tcp_v6_send_reset")
int BPF_KPROBE(tcp_v6_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	return record_no_socket(sk, skb);
}
