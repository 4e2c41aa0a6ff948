// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* dns: DNS over UDP and TCP port 53 seen by TC programs on the node's host-side interfaces
 * (those `flow` watches too). A query (to port 53, QR clear) is remembered by client address,
 * client port and DNS id in `pending`; its response (from port 53, QR set) is timed against it
 * into a log2 histogram per client address, and every response is counted by rcode. The
 * agent names the client's pod from its address and reports queries left in `pending` past
 * the timeout. Like `flow`, a packet is seen once: at the ingress of the watched interface it
 * enters the node through, or at egress when it did not come in through one. */
#include "sonde.bpf.h"
#include "sonde_tc.bpf.h"
#include "dns.h"

#define DNS_PORT 53

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dns_count_key);
	__type(value, __u64);
} dns_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dns_query_key);
	__type(value, struct dns_query);
} pending SEC(".maps");

static __always_inline void dns_count(const __u8 *client, __u8 family, __u8 kind, __u8 slot,
				      __u64 n)
{
	struct dns_count_key key = {};

	__builtin_memcpy(key.client, client, 16);
	key.family = family;
	key.kind = kind;
	key.slot = slot;
	sonde_add(&dns_counts, &key, n);
}

static __always_inline void dns_packet(struct __sk_buff *skb)
{
	struct sonde_tuple t = {};
	__u8 *saddr = t.saddr, *daddr = t.daddr, family, protocol;
	__u16 sport, dport, hdr[2];
	__u32 l4, payload;
	__be16 ports[2];

	if (sonde_tc_ip(skb, &t, &l4) || !l4)
		return;
	family = t.family;
	protocol = t.protocol;
	if (protocol != IPPROTO_UDP_ && protocol != IPPROTO_TCP_)
		return;
	if (sonde_tc_load(skb, l4, ports, sizeof(ports)))
		return;
	sport = bpf_ntohs(ports[0]);
	dport = bpf_ntohs(ports[1]);
	if (sport != DNS_PORT && dport != DNS_PORT)
		return;
	if (protocol == IPPROTO_UDP_) {
		payload = l4 + 8;
	} else {
		__u8 doff;
		if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1))
			return;
		/* Over TCP a message starts with its 2-byte length; segments without one (ACKs,
		 * later parts of a long message) fail the read below or are not at a start. */
		payload = l4 + (doff >> 4) * 4 + 2;
	}
	if (bpf_skb_load_bytes(skb, payload, hdr, sizeof(hdr)))
		return;
	__u16 id = bpf_ntohs(hdr[0]), flags = bpf_ntohs(hdr[1]);
	struct dns_query_key key = {};

	key.id = id;
	key.family = family;
	key.protocol = protocol;
	if (dport == DNS_PORT && !(flags & 0x8000)) {
		struct dns_query q = {};

		__builtin_memcpy(key.client, saddr, 16);
		key.client_port = sport;
		q.start_ns = bpf_ktime_get_ns();
		__builtin_memcpy(q.server, daddr, 16);
		q.server_port = dport;
		/* A query sent again keeps its first time. */
		bpf_map_update_elem(&pending, &key, &q, BPF_NOEXIST);
	} else if (sport == DNS_PORT && (flags & 0x8000)) {
		struct dns_query *q;

		__builtin_memcpy(key.client, daddr, 16);
		key.client_port = dport;
		dns_count(daddr, family, DNS_KIND_RCODE, flags & 0xf, 1);
		q = bpf_map_lookup_elem(&pending, &key);
		if (q) {
			__u64 ns = bpf_ktime_get_ns() - q->start_ns;
			dns_count(daddr, family, DNS_KIND_BUCKET, sonde_log2_slot(ns), 1);
			dns_count(daddr, family, DNS_KIND_SUM, 0, ns);
			bpf_map_delete_elem(&pending, &key);
		}
	}
}

SEC("classifier")
int dns_ingress(struct __sk_buff *skb)
{
	dns_packet(skb);
	return TCX_NEXT;
}

SEC("classifier")
int dns_egress(struct __sk_buff *skb)
{
	if (!sonde_tc_seen(skb))
		dns_packet(skb);
	return TCX_NEXT;
}
