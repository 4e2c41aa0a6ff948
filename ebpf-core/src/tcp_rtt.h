/* tcp_rtt: records shared by tcp_rtt.bpf.c and tcp_rtt.rs. */
#ifndef TCP_RTT_H
#define TCP_RTT_H
#include "sonde.h"

/* What an `rtts` counter slot counts (tcp_rtt_key.kind). */
#define TCP_RTT_KIND_BUCKET 0 /* RTT samples in log2 slot `slot` */
#define TCP_RTT_KIND_SUM 1    /* sum of the samples in nanoseconds (slot 0) */

/* probe_params values. */
#define TCP_RTT_PARAM_SAMPLE_NS 0 /* a flow's srtt enters the histogram at most this often; 0 = every segment */
#define TCP_RTT_PARAM_SAMPLE_EVERY 1 /* past its first segments, one segment of a connection in this many is looked at, drawn at random; 0 or 1 = every segment */

/* A connection's first segments are always looked at, so that every connection, however
 * short, has a row in `flows` and a first sample: up to its TCP_RTT_FIRST_SEGMENTS-th, and
 * every one before it has received or had acknowledged any data (under GRO, the first data a
 * receiver sees may already be its fortieth segment). */
#define TCP_RTT_FIRST_SEGMENTS 4

/* Key of the in-kernel `rtts` counter. */
struct tcp_rtt_key {
	struct sonde_netns netns;
	__u8 kind;
	__u8 slot;
	__u8 pad[6];
};

/* A row of the `flows` table (LRU hash keyed by socket address): the latest view of one TCP
 * connection, taken at each sample and removed when the socket is destroyed. */
struct tcp_rtt_flow {
	__u64 updated_ns;  /* bpf_ktime_get_ns of the last sample */
	__u64 sampled_ns;  /* when srtt last entered the histogram */
	__u64 segments;    /* segments the connection received (tcp_sock's segs_in) at the sample */
	struct sonde_netns netns;
	__u32 srtt_us;     /* smoothed RTT */
	__u32 rttvar_us;   /* RTT variation (mdev) */
	__u32 min_rtt_us;  /* minimum RTT over the kernel's window */
	__u32 snd_cwnd;    /* congestion window, in segments */
	__u32 snd_wnd;     /* peer's receive window, bytes */
	__u32 rcv_wnd;     /* our receive window, bytes */
	__u32 mss;         /* mss_cache */
	struct sonde_tuple tuple; /* local end as source */
};

#endif
