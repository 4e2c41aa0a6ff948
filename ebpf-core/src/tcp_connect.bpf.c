// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* tcp_connect: TCP handshakes seen through their state changes (tp_btf
 * sock/inet_sock_set_state). Durations go into log2 histograms and failures into counters per
 * network namespace and side, in the kernel; slow and failed handshakes become events.
 *
 * What the tracepoint reports (measured on 6.18):
 * - connect: CLOSE -> SYN_SENT when connect() starts (source port still 0), then
 *   SYN_SENT -> ESTABLISHED on the SYN-ACK, or SYN_SENT -> CLOSE on failure, with sk_err
 *   ECONNREFUSED after a reset and ETIMEDOUT when the SYN retries ran out. The start time is
 *   kept per socket in an LRU hash.
 * - accept: the request sock that answers the SYN (TCP_NEW_SYN_RECV) never appears. The child
 *   socket is created when the final ACK arrives and reports LISTEN -> SYN_RECV and
 *   SYN_RECV -> ESTABLISHED microseconds apart, so the handshake time is read from the child:
 *   its first RTT sample, taken from the first SYN-ACK's send time (tcp_synack_rtt_meas), or,
 *   when the SYN-ACK was retransmitted, total_rto_time (ms since the first SYN-ACK). */
#include "sonde.bpf.h"
#include "tcp_connect.h"

#define ECONNREFUSED_ 111
#define ETIMEDOUT_ 110
#define NSEC_PER_USEC 1000ULL
#define NSEC_PER_MSEC 1000000ULL

SONDE_PARAMS

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcp_connect_key);
	__type(value, __u64);
} connects SEC(".maps");

/* connect() start times by socket address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} inflight SEC(".maps");

static __always_inline void count(struct sonde_netns netns, __u8 side, __u8 kind, __u8 value, __u64 n)
{
	struct tcp_connect_key key = {};

	key.netns = netns;
	key.side = side;
	key.kind = kind;
	key.value = value;
	sonde_add(&connects, &key, n);
}

/* SYN-ACK timeouts of a child's request: tcp_sock.total_rto came with Linux 6.7; before it
 * the field does not exist and no timeouts are known (the handshake time is then the RTT). */
static __always_inline __u16 total_rto(struct tcp_sock *tp)
{
	if (bpf_core_field_exists(tp->total_rto))
		return tp->total_rto;
	return 0;
}

static __always_inline void report(const struct sock *sk, struct tcp_sock *tp, struct sonde_netns netns,
				   __u8 side, __u8 cause, __u64 duration_ns)
{
	struct tcp_connect_event *e;
	struct sonde_config *cfg;

	e = sonde_event_start(sizeof(*e), netns.inum, &cfg);
	if (!e)
		return;
	e->duration_ns = duration_ns;
	e->netns = netns;
	e->side = side;
	e->cause = cause;
	e->error = sk->sk_err;
	sonde_sk_tuple(sk, &e->tuple);
	if (tp) {
		/* SYNs resent (total_retrans); for a child, SYN-ACK timeouts its request had. */
		e->retransmits = side == TCP_CONNECT_SIDE_CONNECT ? tp->total_retrans : total_rto(tp);
		/* On the way to CLOSE the port is released (inet_num = 0) before the tracepoint
		 * fires; inet_sport still has it. */
		if (!e->tuple.sport)
			e->tuple.sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	}
	sonde_submit(e, cfg);
}

static __always_inline void established(const struct sock *sk, struct tcp_sock *tp,
					struct sonde_netns netns, __u8 side, __u64 duration_ns)
{
	__u64 slow_ns;

	count(netns, side, TCP_CONNECT_KIND_BUCKET, sonde_log2_slot(duration_ns), 1);
	count(netns, side, TCP_CONNECT_KIND_SUM, 0, duration_ns);
	slow_ns = sonde_param(TCP_CONNECT_PARAM_SLOW_NS);
	if (duration_ns >= slow_ns)
		report(sk, tp, netns, side, TCP_CONNECT_ESTABLISHED, duration_ns);
}

static __always_inline void failed(const struct sock *sk, struct tcp_sock *tp, struct sonde_netns netns,
				   __u8 side, __u64 duration_ns)
{
	int err = sk->sk_err;
	__u8 cause = err == ECONNREFUSED_ ? TCP_CONNECT_REFUSED
		     : err == ETIMEDOUT_  ? TCP_CONNECT_TIMEOUT
					  : TCP_CONNECT_OTHER;

	count(netns, side, TCP_CONNECT_KIND_FAILURE, cause, 1);
	report(sk, tp, netns, side, cause, duration_ns);
}

/* The passive handshake's duration, from the child socket (see the top of this file). */
static __always_inline __u64 accept_duration(struct tcp_sock *tp)
{
	if (total_rto(tp))
		return (__u64)tp->total_rto_time * NSEC_PER_MSEC;
	return (__u64)(tp->srtt_us >> 3) * NSEC_PER_USEC;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_connect, const struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk, now, duration = 0, *start;
	struct tcp_sock *tp;
	struct sonde_netns netns;

	/* SCTP, MPTCP and others report their state changes here too. */
	if (!sk || sk->sk_protocol != IPPROTO_TCP_)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&inflight, &key, &now, BPF_ANY);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		return 0;
	tp = bpf_skc_to_tcp_sock((void *)sk);
	netns = sonde_sk_netns(sk);

	if (oldstate == TCP_SYN_SENT) {
		start = bpf_map_lookup_elem(&inflight, &key);
		if (start) {
			duration = bpf_ktime_get_ns() - *start;
			bpf_map_delete_elem(&inflight, &key);
		}
		if (newstate == TCP_ESTABLISHED) {
			/* Started before the probe attached: no duration to observe. */
			if (start)
				established(sk, tp, netns, TCP_CONNECT_SIDE_CONNECT, duration);
		} else if (newstate == TCP_CLOSE) {
			failed(sk, tp, netns, TCP_CONNECT_SIDE_CONNECT, duration);
		}
		return 0;
	}
	/* oldstate == TCP_SYN_RECV: a child socket finishing (or failing) its handshake. */
	if (newstate == TCP_ESTABLISHED) {
		if (tp)
			established(sk, tp, netns, TCP_CONNECT_SIDE_ACCEPT, accept_duration(tp));
	} else if (newstate == TCP_CLOSE) {
		failed(sk, tp, netns, TCP_CONNECT_SIDE_ACCEPT, tp ? accept_duration(tp) : 0);
	}
	return 0;
}
