/* tcp_reset: records shared by tcp_reset.bpf.c and tcp_reset.rs. */
#ifndef TCP_RESET_H
#define TCP_RESET_H
#include "sonde.h"

#define TCP_RESET_SENT 0
#define TCP_RESET_RECEIVED 1

/* Key of the in-kernel `resets` counter. */
struct tcp_reset_key {
	struct sonde_netns netns;
	__u32 direction; /* TCP_RESET_SENT or TCP_RESET_RECEIVED */
	__u32 pad;
};

struct tcp_reset_event {
	__u64 timestamp_ns;
	struct sonde_netns netns;
	__u8 direction;
	__u8 state; /* TCP state of the socket, 0 when the reset answers a packet without one */
	__u8 pad[2];
	struct sonde_tuple tuple; /* oriented as the reset travels: source sent it */
};

#endif
