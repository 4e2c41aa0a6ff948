// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* tcp_state: TCP sockets changing state (tp_btf sock/inet_sock_set_state), counted per network
 * namespace and new state in the kernel, with a rate-limited event for each connection that
 * ends: the state it left, its 5-tuple, how long it lived and the bytes it moved.
 *
 * - Only TCP: SCTP, MPTCP (the meta socket; its subflows are TCP) and others report their
 *   state changes here too.
 * - A connection starts at CLOSE -> SYN_SENT (connect()) or, for an accepted one, at its child
 *   socket's LISTEN -> SYN_RECV: the request sock that answers the SYN (TCP_NEW_SYN_RECV)
 *   never appears here, and the child is made when the final ACK arrives (at the SYN with
 *   TCP Fast Open), so an accepted connection's lifetime leaves out its handshake. The start
 *   is kept by socket address in an LRU hash, so a socket freed without reaching CLOSE costs
 *   a slot until the LRU reuses it.
 * - It ends at the change to CLOSE, from any state but LISTEN (a listener closing) and CLOSE:
 *   ESTABLISHED or CLOSE_WAIT after a reset or a timeout, FIN_WAIT2 or CLOSING when a time-wait
 *   sock takes over (which reports nothing here), LAST_ACK, FIN_WAIT1, and SYN_SENT or
 *   SYN_RECV for a failed handshake (tcp_connect counts those by cause). A connection whose
 *   start was not seen (it began before the probe was loaded) has no duration:
 *   TCP_STATE_NO_DURATION.
 * - Bytes: tcp_sock.bytes_acked (sent and acknowledged by the peer) and bytes_received (received
 *   in sequence), both RFC 4898 counters of Linux 4.1 (and so of every kernel Sonde runs on).
 *   They count sequence space, so a SYN or FIN may add one to the payload's bytes (measured on
 *   6.18: a connect()ed socket that sent 1000 bytes, received 500 and closed first reports
 *   1002 and 501, its accepted peer 501 and 1001: tests/tests/tcp_state.rs). */
#include "sonde.bpf.h"
#include "tcp_state.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcp_state_key);
	__type(value, __u64);
} changes SEC(".maps");

/* Connection start times (bpf_ktime_get_ns) by socket address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} starts SEC(".maps");

/* A connection ending (see the top of this file): its event, when one is due. */
static __always_inline void closed(const struct sock *sk, struct sonde_netns netns, int oldstate,
				   __u64 duration_ns)
{
	struct tcp_state_event *e;
	struct sonde_config *cfg;
	struct tcp_sock *tp;

	e = sonde_event_start(sizeof(*e), netns.inum, &cfg);
	if (!e)
		return;
	e->netns = netns;
	e->from = oldstate;
	e->duration_ns = duration_ns;
	sonde_sk_tuple(sk, &e->tuple);
	/* The verifier checks loads through the tracepoint's sk against struct sock, so a cast
	 * would not reach tcp_sock's fields: the helper gives a tcp_sock pointer (Linux 5.9). */
	tp = bpf_skc_to_tcp_sock((void *)sk);
	if (tp) {
		e->bytes_sent = tp->bytes_acked;
		e->bytes_received = tp->bytes_received;
		/* On the way to CLOSE the port is released (inet_num = 0) before the tracepoint
		 * fires; inet_sport still has it. */
		if (!e->tuple.sport)
			e->tuple.sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	}
	sonde_submit(e, cfg);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk, now, duration = TCP_STATE_NO_DURATION, *start;
	struct tcp_state_key ckey = {};
	struct sonde_netns netns;

	if (!sk || sk->sk_protocol != IPPROTO_TCP_)
		return 0;
	netns = sonde_sk_netns(sk);
	ckey.netns = netns;
	ckey.state = newstate;
	sonde_count(&changes, &ckey);

	if (newstate == TCP_SYN_SENT || newstate == TCP_SYN_RECV) {
		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&starts, &key, &now, BPF_ANY);
		return 0;
	}
	if (newstate != TCP_CLOSE || oldstate == TCP_LISTEN || oldstate == TCP_CLOSE)
		return 0;
	start = bpf_map_lookup_elem(&starts, &key);
	if (start) {
		duration = bpf_ktime_get_ns() - *start;
		bpf_map_delete_elem(&starts, &key);
	}
	closed(sk, netns, oldstate, duration);
	return 0;
}
