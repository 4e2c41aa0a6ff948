/* What Sonde's TC probes share (flow, dns): the `watched` map of the interfaces the agent
 * attached them to, the rule that sees each packet once, and the IP header reader. Include
 * after sonde.bpf.h. */
#ifndef SONDE_TC_BPF_H
#define SONDE_TC_BPF_H

#define TCX_NEXT -1
#define SONDE_ETH_HLEN 14

/* The interfaces the programs are attached to (ifindex -> 1), kept by the agent. */
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

	return in && bpf_map_lookup_elem(&watched, &in);
}

/* Reads the family, protocol and addresses of an Ethernet frame's IPv4 or IPv6 header into
 * `t`, and the offset of its L4 header into `l4` (0 for an IPv4 fragment after the first,
 * which has no ports). Returns -1 when the frame is not IP. */
static __always_inline int sonde_tc_ip(struct __sk_buff *skb, struct sonde_tuple *t, __u32 *l4)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, SONDE_ETH_HLEN, &ip, sizeof(ip)) || ip.version != 4)
			return -1;
		t->family = SONDE_AF_INET;
		t->protocol = ip.protocol;
		__builtin_memcpy(t->saddr, &ip.saddr, 4);
		__builtin_memcpy(t->daddr, &ip.daddr, 4);
		*l4 = ip.frag_off & bpf_htons(0x1fff) ? 0 : SONDE_ETH_HLEN + ip.ihl * 4;
		return 0;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, SONDE_ETH_HLEN, &ip6, sizeof(ip6)) || ip6.version != 6)
			return -1;
		t->family = SONDE_AF_INET6;
		t->protocol = ip6.nexthdr;
		__builtin_memcpy(t->saddr, &ip6.saddr, 16);
		__builtin_memcpy(t->daddr, &ip6.daddr, 16);
		*l4 = SONDE_ETH_HLEN + sizeof(ip6);
		return 0;
	}
	return -1;
}

#endif
