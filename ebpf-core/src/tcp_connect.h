/* tcp_connect: records shared by tcp_connect.bpf.c and tcp_connect.rs. */
#ifndef TCP_CONNECT_H
#define TCP_CONNECT_H
#include "sonde.h"

/* Which end of the handshake: this socket connected, or a listener accepted it. */
#define TCP_CONNECT_SIDE_CONNECT 0
#define TCP_CONNECT_SIDE_ACCEPT 1

/* What a `connects` counter slot counts (tcp_connect_key.kind). */
#define TCP_CONNECT_KIND_BUCKET 0 /* handshakes whose duration falls in log2 slot `value` */
#define TCP_CONNECT_KIND_SUM 1    /* sum of handshake durations in nanoseconds (value 0) */
#define TCP_CONNECT_KIND_FAILURE 2 /* failed handshakes of cause `value` */

/* Why a handshake failed, from the socket's error when it closed. */
#define TCP_CONNECT_ESTABLISHED 0 /* not a failure: a slow handshake */
#define TCP_CONNECT_REFUSED 1     /* ECONNREFUSED: the peer answered with a reset */
#define TCP_CONNECT_TIMEOUT 2     /* ETIMEDOUT: SYN (or SYN-ACK) retransmissions ran out */
#define TCP_CONNECT_OTHER 3       /* anything else: closed by the application, unreachable... */

/* probe_params values. */
#define TCP_CONNECT_PARAM_SLOW_NS 0 /* event for handshakes at least this slow; 0 = every one */

/* Key of the in-kernel `connects` counter. */
struct tcp_connect_key {
	struct sonde_netns netns;
	__u8 side;
	__u8 kind;
	__u8 value;
	__u8 pad[5];
};

struct tcp_connect_event {
	__u64 timestamp_ns;
	__u64 duration_ns; /* 0 when the start was not seen (the probe attached mid-handshake) */
	struct sonde_netns netns;
	__u8 side;
	__u8 cause;       /* TCP_CONNECT_ESTABLISHED for a slow handshake, else why it failed */
	__u8 retransmits; /* SYNs (connect) or SYN-ACKs (accept) sent again */
	__u8 pad;
	__s32 error; /* the socket's error (errno) when it closed, 0 if none */
	struct sonde_tuple tuple; /* local end as source */
};

#endif
