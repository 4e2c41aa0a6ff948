// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* tcp_rtt: smoothed RTT of established TCP connections (tp_btf tcp/tcp_probe, which fires for
 * every segment tcp_rcv_established receives). Each flow's srtt enters a log2 histogram per
 * network namespace at most once per sample interval, and at each sample the flow's srtt, cwnd
 * and windows are kept in the `flows` table (sized by the agent) until the socket is destroyed
 * (tp_btf tcp/tcp_destroy_sock).
 *
 * Most segments touch no table: past a connection's first segments (TCP_RTT_FIRST_SEGMENTS by
 * its own segs_in counter, and any before its first data, by bytes_received and bytes_acked,
 * which a segment updates after this tracepoint), one segment in TCP_RTT_PARAM_SAMPLE_EVERY, drawn
 * at random (sonde_one_in), looks its flow up; the others cost a random number. A random draw
 * rather than every Nth segment: segs_in grows by a GRO packet's segment count, so a fixed
 * stride could step over every sample point, and a per-CPU stride could keep picking the same
 * one of two alternating connections. */
#include "sonde.bpf.h"
#include "tcp_rtt.h"

SONDE_PARAMS
SONDE_SAMPLER

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcp_rtt_key);
	__type(value, __u64);
} rtts SEC(".maps");

/* Sized by the agent at load time (flowTableSize in the probe's config). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tcp_rtt_flow);
} flows SEC(".maps");

static __always_inline void observe(struct sonde_netns netns, __u64 ns)
{
	struct tcp_rtt_key key = {};

	key.netns = netns;
	key.kind = TCP_RTT_KIND_BUCKET;
	key.slot = sonde_log2_slot(ns);
	sonde_add(&rtts, &key, 1);
	key.kind = TCP_RTT_KIND_SUM;
	key.slot = 0;
	sonde_add(&rtts, &key, ns);
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_rtt, struct sock *sk, const struct sk_buff *skb)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	__u64 key = (__u64)sk, now, interval, every;
	struct tcp_rtt_flow *f;
	__u32 srtt, segments;

	if (!tp)
		return 0;
	every = sonde_param(TCP_RTT_PARAM_SAMPLE_EVERY);
	segments = tp->segs_in;
	if (!sonde_one_in(every) && segments > TCP_RTT_FIRST_SEGMENTS &&
	    (tp->bytes_received || tp->bytes_acked))
		return 0;
	now = bpf_ktime_get_ns();
	f = bpf_map_lookup_elem(&flows, &key);
	if (!f) {
		struct tcp_rtt_flow fresh = {};

		fresh.netns = sonde_sk_netns(sk);
		sonde_sk_tuple(sk, &fresh.tuple);
		bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST);
		f = bpf_map_lookup_elem(&flows, &key);
		if (!f)
			return 0;
	}
	/* The flow's row is a snapshot taken at each sample, which is what the histogram sees
	 * too. */
	interval = sonde_param(TCP_RTT_PARAM_SAMPLE_NS);
	if (f->sampled_ns && now - f->sampled_ns < interval)
		return 0;
	srtt = tp->srtt_us >> 3;
	f->segments = segments;
	f->updated_ns = now;
	f->srtt_us = srtt;
	f->rttvar_us = tp->mdev_us >> 2;
	f->min_rtt_us = tp->rtt_min.s[0].v;
	f->snd_cwnd = tp->snd_cwnd;
	f->snd_wnd = tp->snd_wnd;
	f->rcv_wnd = tp->rcv_wnd;
	f->mss = tp->mss_cache;
	/* No RTT measured yet (srtt 0): nothing to observe, and the next segment samples again. */
	if (srtt) {
		f->sampled_ns = now;
		observe(f->netns, (__u64)srtt * 1000);
	}
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcp_rtt_forget, struct sock *sk)
{
	__u64 key = (__u64)sk;

	bpf_map_delete_elem(&flows, &key);
	return 0;
}
