/* socket_latency: records shared by socket_latency.bpf.c and socket_latency.rs. */
#ifndef SOCKET_LATENCY_H
#define SOCKET_LATENCY_H
#include "sonde.h"

/* What a `sockets` counter slot counts (socket_latency_key.kind). */
#define SOCKLAT_KIND_BUCKET 0           /* reads whose packet arrived within log2 slot `slot` */
#define SOCKLAT_KIND_SUM 1              /* sum of those times in nanoseconds (slot 0) */
#define SOCKLAT_KIND_RCVQUEUE_FULL 2    /* packets refused: the socket's receive buffer was full */
#define SOCKLAT_KIND_EXCEED_BUF_LIMIT 3 /* receive memory refused by the protocol's limits */

/* probe_params values. */
#define SOCKLAT_PARAM_SAMPLE_EVERY 0 /* each pass of a packet through netif_receive_skb is stamped with a chance of one in this many; 0 or 1 = every pass */

/* Arrival times kept per UDP socket for datagrams waiting in its queue; datagrams queued
 * beyond this many unread ones are not timed. */
#define SOCKLAT_UDP_SLOTS 32

/* Key of the in-kernel `sockets` counter: the receiving socket's network namespace. */
struct socket_latency_key {
	struct sonde_netns netns;
	__u8 kind;
	__u8 slot;
	__u8 pad[6];
};

#endif
