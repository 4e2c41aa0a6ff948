/* flow: records shared by flow.bpf.c and flow.rs. */
#ifndef FLOW_H
#define FLOW_H
#include "sonde.h"

/* Slots of the per-CPU `flow_counts` array. */
#define FLOW_COUNT_INSERTED 0 /* rows added to `flows` (a row the LRU evicted and added again counts again) */
#define FLOW_COUNT_UNPARSED 1 /* packets that were neither IPv4 nor IPv6 (ARP, ...): not in any row */
#define FLOW_COUNT_MAX 2

/* A row of the `flows` table (LRU hash keyed by struct sonde_tuple, as the packet travels):
 * what one direction of one flow has carried through the watched interfaces. Each packet is
 * counted once: when it enters the node from a watched interface (TC ingress), or when it
 * leaves through one without having entered through one (TC egress). */
struct flow_row {
	__u64 packets;  /* segments: a GSO packet counts as the segments it stands for */
	__u64 bytes;    /* IP bytes (headers included, link layer not) */
	__u64 first_ns; /* bpf_ktime_get_ns of the first packet */
	__u64 last_ns;  /* and of the latest */
	__u32 ifindex;  /* the interface it was last counted at */
	__u32 pad;
};

#endif
