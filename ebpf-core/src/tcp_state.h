/* tcp_state: records shared by tcp_state.bpf.c and tcp_state.rs. */
#ifndef TCP_STATE_H
#define TCP_STATE_H
#include "sonde.h"

/* tcp_state_event.duration_ns when the connection's start was not seen: it began before the
 * probe was loaded (or its start was evicted from the LRU `starts` map). */
#define TCP_STATE_NO_DURATION (~0ULL)

/* Key of the in-kernel `changes` counter: state changes into `state`. */
struct tcp_state_key {
	struct sonde_netns netns;
	__u32 state; /* the new TCP state (TCP_ESTABLISHED = 1 ... TCP_NEW_SYN_RECV = 12) */
	__u32 pad;
};

/* A connection ending: its socket went to TCP_CLOSE from any state but LISTEN (or CLOSE). */
struct tcp_state_event {
	__u64 timestamp_ns;
	struct sonde_netns netns;
	__u8 from; /* the state it left for TCP_CLOSE */
	__u8 pad[7];
	struct sonde_tuple tuple; /* local end as source */
	__u64 duration_ns;    /* since SYN_SENT (connect) or SYN_RECV (accepted child socket);
			       * TCP_STATE_NO_DURATION when that was not seen */
	/* Sequence space: the SYN and FIN each count one (see tcp_state.bpf.c). */
	__u64 bytes_sent;     /* tcp_sock.bytes_acked: bytes the peer acknowledged */
	__u64 bytes_received; /* tcp_sock.bytes_received: bytes received in sequence */
};

#endif
