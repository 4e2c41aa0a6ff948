/* tcp_retrans: records shared by tcp_retrans.bpf.c and tcp_retrans.rs. */
#ifndef TCP_RETRANS_H
#define TCP_RETRANS_H
#include "sonde.h"

/* Key of the in-kernel `retransmits` counter: the network namespace. */
struct tcp_retrans_key {
	struct sonde_netns netns;
};

struct tcp_retrans_event {
	__u64 timestamp_ns;
	struct sonde_netns netns;
	__u8 state; /* TCP state of the socket (TCP_ESTABLISHED = 1, ...) */
	__u8 pad[3];
	struct sonde_tuple tuple;
};

#endif
