/* What Sonde's TC probes share (flow, dns): the `watched` map of the interfaces the agent
 * attached them to, the rule that sees each packet once, and the IP header reader. Include
 * after sonde.bpf.h. */
#ifndef SONDE_TC_BPF_H
#define SONDE_TC_BPF_H

#define TCX_NEXT -1
#define SONDE_ETH_HLEN 14

/* The interfaces the programs are attached to, kept by the agent: those with an index below
 * SONDE_WATCHED_LOW in `watched_low` (ifindex -> 1, 0 when not watched), an array, whose
 * lookup the verifier makes a load; the others in `watched` (ifindex -> 1). A node's
 * interface indexes grow with every veth made, so both are needed. */
#define SONDE_WATCHED_LOW 65536

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SONDE_WATCHED_LOW);
	__type(key, __u32);
	__type(value, __u8);
} watched_low SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} watched SEC(".maps");

/* At egress: whether the packet entered the node through a watched interface, where the
 * ingress program saw it already. A packet from one pod to another crosses two watched
 * interfaces and is seen once, at the first. */
static __always_inline bool sonde_tc_seen(const struct __sk_buff *skb)
{
	__u32 in = skb->ingress_ifindex;
	__u8 *low;

	if (!in)
		return false;
	if (in < SONDE_WATCHED_LOW) {
		low = bpf_map_lookup_elem(&watched_low, &in);
		return low && *low;
	}
	return bpf_map_lookup_elem(&watched, &in);
}

/* Reads the family, protocol and addresses of an Ethernet frame's IPv4 or IPv6 header into
 * `t`, and the offset of its L4 header into `l4` (0 for an IPv4 fragment after the first,
 * which has no ports). Returns -1 when the frame is not IP. The header is read in place
 * when it is in the packet's linear data (as it nearly always is), else copied out with
 * bpf_skb_load_bytes, a helper call. */
static __always_inline int sonde_tc_ip(struct __sk_buff *skb, struct sonde_tuple *t, __u32 *l4)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr copy, *ip = data + SONDE_ETH_HLEN;
		if ((void *)(ip + 1) > end) {
			if (bpf_skb_load_bytes(skb, SONDE_ETH_HLEN, &copy, sizeof(copy)))
				return -1;
			ip = &copy;
		}
		if (ip->version != 4)
			return -1;
		t->family = SONDE_AF_INET;
		t->protocol = ip->protocol;
		__builtin_memcpy(t->saddr, &ip->saddr, 4);
		__builtin_memcpy(t->daddr, &ip->daddr, 4);
		*l4 = ip->frag_off & bpf_htons(0x1fff) ? 0 : SONDE_ETH_HLEN + ip->ihl * 4;
		return 0;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr copy, *ip6 = data + SONDE_ETH_HLEN;
		if ((void *)(ip6 + 1) > end) {
			if (bpf_skb_load_bytes(skb, SONDE_ETH_HLEN, &copy, sizeof(copy)))
				return -1;
			ip6 = &copy;
		}
		if (ip6->version != 6)
			return -1;
		t->family = SONDE_AF_INET6;
		t->protocol = ip6->nexthdr;
		__builtin_memcpy(t->saddr, &ip6->saddr, 16);
		__builtin_memcpy(t->daddr, &ip6->daddr, 16);
		*l4 = SONDE_ETH_HLEN + sizeof(*ip6);
		return 0;
	}
	return -1;
}

/* Reads `len` (at most 4) bytes at offset `off` of the packet into `to`: in place when they
 * are in its linear data, else with bpf_skb_load_bytes. Returns 0 when read. */
static __always_inline int sonde_tc_load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u8 *at;

	/* Offsets beyond any header this reads (an IPv4 header's 60 bytes behind Ethernet's,
	 * then a TCP header's 60) take the helper; the mask bounds the offset for the verifier. */
	if (off < 256) {
		at = data + (off & 0xff);
		if ((void *)(at + 4) <= end) {
			__builtin_memcpy(to, at, len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

#endif
