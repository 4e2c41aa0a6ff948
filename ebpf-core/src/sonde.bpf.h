/* Kernel-side helpers every Sonde probe shares: the per-probe config, stats and ring buffer
 * maps, the per-CPU token bucket that rate-limits events, batched ring buffer wake-ups, and
 * CO-RE readers for network namespaces and 5-tuples. Include once per probe object. */
#ifndef SONDE_BPF_H
#define SONDE_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "sonde.h"

#define NSEC_PER_SEC 1000000000ULL
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
/* Idle time credited to a token bucket is capped so that the arithmetic cannot overflow. */
#define SONDE_MAX_REFILL_NS (10 * NSEC_PER_SEC)

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_config);
} probe_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SONDE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} probe_stats SEC(".maps");

struct sonde_bucket {
	__u64 tokens_ns; /* one event costs NSEC_PER_SEC */
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_bucket);
} event_bucket SEC(".maps");

/* Each network namespace's event budget, in front of the CPU's: one pod's flood spends its
 * own tokens, not those of the pods beside it. One bucket for all CPUs (a per-CPU map would
 * take namespaces x CPUs of memory); concurrent updates from two CPUs may lose a refill or
 * a spent token, which a rate limit can bear, while suppressed counts are added atomically.
 * LRU: namespaces that emit nothing make room (their suppressed counts already read). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct sonde_ns_bucket);
} ns_buckets SEC(".maps");

/* Sized by the agent at load time (ring_buffer_size in the probe's config). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline void sonde_stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&probe_stats, &slot);
	if (v)
		*v += 1;
}

static __always_inline struct sonde_config *sonde_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&probe_config, &zero);
}

/* Adds one to a per-CPU hash counter, creating the slot on first use. Counter maps are LRU:
 * when full, the slots least recently counted (typically those of deleted namespaces) make
 * room, and the agent has already folded their counts into its metrics. */
static __always_inline void sonde_count(void *map, const void *key)
{
	__u64 one = 1, *v = bpf_map_lookup_elem(map, key);
	if (v)
		*v += 1;
	else
		bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
}

/* Takes one token from a bucket of `rate` tokens a second and depth `burst` (tokens counted
 * in nanosecond-tokens, one token being NSEC_PER_SEC), refilled for the time since it was
 * last touched; false when none is left. A bucket never touched starts full. */
static __always_inline bool sonde_take_token(__u64 *tokens_ns, __u64 *last_ns, __u64 now,
					     __u64 rate, __u64 burst)
{
	__u64 elapsed = now - *last_ns, tokens, cap = burst * NSEC_PER_SEC;

	if (elapsed > SONDE_MAX_REFILL_NS)
		elapsed = SONDE_MAX_REFILL_NS;
	tokens = *tokens_ns + elapsed * rate;
	if (tokens > cap)
		tokens = cap;
	*last_ns = now;
	if (tokens < NSEC_PER_SEC) {
		*tokens_ns = tokens;
		return false;
	}
	*tokens_ns = tokens - NSEC_PER_SEC;
	return true;
}

/* Whether an event of network namespace `netns` (0: of no namespace, such as a softirq's)
 * may be emitted now: events enabled, a token left in the namespace's bucket, then one in
 * this CPU's. Records refused are counted as suppressed, for the probe and for the
 * namespace. With rate 0 (a consumer that wants every event) neither bucket applies. */
static __always_inline bool sonde_event_allowed(const struct sonde_config *cfg, __u32 netns)
{
	struct sonde_ns_bucket *nb = NULL;
	struct sonde_bucket *b;
	__u32 zero = 0;
	__u64 now;

	if (!(cfg->flags & SONDE_F_EVENTS))
		return false;
	if (cfg->rate == 0)
		return true;
	/* Read only where a bucket needs it: a counting-only probe pays no clock read. */
	now = bpf_ktime_get_ns();
	if (netns && cfg->ns_rate) {
		nb = bpf_map_lookup_elem(&ns_buckets, &netns);
		if (!nb) {
			struct sonde_ns_bucket fresh = {};

			bpf_map_update_elem(&ns_buckets, &netns, &fresh, BPF_NOEXIST);
			nb = bpf_map_lookup_elem(&ns_buckets, &netns);
		}
		if (nb && !sonde_take_token(&nb->tokens_ns, &nb->last_ns, now, cfg->ns_rate,
					    cfg->ns_burst))
			goto suppressed;
	}
	b = bpf_map_lookup_elem(&event_bucket, &zero);
	if (!b)
		return false;
	if (sonde_take_token(&b->tokens_ns, &b->last_ns, now, cfg->rate, cfg->burst))
		return true;
suppressed:
	if (nb)
		__sync_fetch_and_add(&nb->suppressed, 1);
	sonde_stat_inc(SONDE_STAT_SUPPRESSED);
	return false;
}

/* Reserves a record, counting the ones the ring buffer had no room for. */
static __always_inline void *sonde_reserve(__u64 size)
{
	void *rec = bpf_ringbuf_reserve(&events, size, 0);
	if (!rec)
		sonde_stat_inc(SONDE_STAT_LOST);
	return rec;
}

/* Submits without waking the agent unless enough data is waiting; the agent's poll
 * timer collects the rest, so a flood costs one wake-up per batch, not per record. */
static __always_inline void sonde_submit(void *rec, const struct sonde_config *cfg)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(rec, avail >= cfg->wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Starts an event record of network namespace `netns` (0 for events of no namespace): when
 * events are on and the rate limits allow, reserves a zeroed record of `size` bytes (a
 * constant once inlined) and stamps its first field, which every event record has:
 * `__u64 timestamp_ns`. Hands back the config for sonde_submit. */
static __always_inline void *sonde_event_start(__u64 size, __u32 netns, struct sonde_config **cfgp)
{
	struct sonde_config *cfg = sonde_config();
	void *rec;

	if (!cfg || !sonde_event_allowed(cfg, netns))
		return NULL;
	rec = sonde_reserve(size);
	if (!rec)
		return NULL;
	__builtin_memset(rec, 0, size);
	*(__u64 *)rec = bpf_ktime_get_ns();
	*cfgp = cfg;
	return rec;
}

/* Probes run as tp_btf programs, whose arguments are BTF-typed kernel pointers: fields are
 * read by direct loads (CO-RE relocated through vmlinux.h's preserve_access_index), which
 * cost far less than bpf_probe_read_kernel calls; a faulting load reads as zero. (kprobe
 * programs cannot: see the _core_read variants below.) */
/* struct net with its cookie as Linux 5.12 and later keep it: a u64 set when the namespace is
 * made. (5.10's is an atomic64_t set on first use only: CO-RE finds no u64 there, and the
 * cookie is left 0.) */
struct net___sonde {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

/* A namespace's inode and cookie. */
static __always_inline struct sonde_netns sonde_net(const struct net *net)
{
	struct sonde_netns n = {};

	if (!net)
		return n;
	n.inum = net->ns.inum;
	if (bpf_core_field_exists(struct net___sonde, net_cookie))
		n.cookie = ((const struct net___sonde *)net)->net_cookie;
	return n;
}

static __always_inline struct sonde_netns sonde_sk_netns(const struct sock *sk)
{
	return sonde_net(sk->__sk_common.skc_net.net);
}

/* The namespace a packet is in: its device's, else its socket's, else the receiving
 * socket's (kfree_skb's rx_sk). */
static __always_inline struct sonde_netns sonde_skb_netns(const struct sk_buff *skb,
							  const struct sock *rx_sk)
{
	struct net_device *dev = skb->dev;
	struct sock *sk;
	struct sonde_netns none = {};

	if (dev)
		return sonde_net(dev->nd_net.net);
	sk = skb->sk;
	if (sk)
		return sonde_sk_netns(sk);
	if (rx_sk)
		return sonde_sk_netns(rx_sk);
	return none;
}

/* Reads the 5-tuple from the IPv4/IPv6 header at head + nh (proto: the packet's EtherType, host
 * order) and, for TCP and UDP, its ports. The headers are raw packet memory, not BTF-typed:
 * every program reads them with bpf_probe_read_kernel. */
static __always_inline void sonde_headers_tuple(const unsigned char *head, __u16 nh, __u16 proto,
						struct sonde_tuple *t)
{
	__u32 l4;

	if (proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		if (ip.version != 4)
			return;
		t->family = SONDE_AF_INET;
		t->protocol = ip.protocol;
		__builtin_memcpy(t->saddr, &ip.saddr, 4);
		__builtin_memcpy(t->daddr, &ip.daddr, 4);
		l4 = nh + ip.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		if (ip6.version != 6)
			return;
		t->family = SONDE_AF_INET6;
		t->protocol = ip6.nexthdr;
		__builtin_memcpy(t->saddr, &ip6.saddr, 16);
		__builtin_memcpy(t->daddr, &ip6.daddr, 16);
		l4 = nh + sizeof(ip6);
	} else {
		return;
	}
	if (t->protocol == IPPROTO_TCP_ || t->protocol == IPPROTO_UDP_) {
		__be16 ports[2];
		if (bpf_probe_read_kernel(ports, sizeof(ports), head + l4) == 0) {
			t->sport = bpf_ntohs(ports[0]);
			t->dport = bpf_ntohs(ports[1]);
		}
	}
}

/* Reads the 5-tuple of a packet from its headers. */
static __always_inline void sonde_skb_tuple(const struct sk_buff *skb, struct sonde_tuple *t)
{
	sonde_headers_tuple(skb->head, skb->network_header, bpf_ntohs(skb->protocol), t);
}

/* Reads a socket's 5-tuple, local end as source. */
static __always_inline void sonde_sk_tuple(const struct sock *sk, struct sonde_tuple *t)
{
	const struct sock_common *c = &sk->__sk_common;
	__u16 family = c->skc_family;

	t->protocol = sk->sk_protocol;
	t->sport = c->skc_num;
	t->dport = bpf_ntohs(c->skc_dport);
	if (family == SONDE_AF_INET) {
		__be32 s = c->skc_rcv_saddr;
		__be32 d = c->skc_daddr;
		t->family = SONDE_AF_INET;
		__builtin_memcpy(t->saddr, &s, 4);
		__builtin_memcpy(t->daddr, &d, 4);
	} else if (family == SONDE_AF_INET6) {
		t->family = SONDE_AF_INET6;
		__builtin_memcpy(t->saddr, &c->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(t->daddr, &c->skc_v6_daddr, 16);
	}
}

/* Swaps source and destination, to describe the reply to a packet. */
static __always_inline void sonde_tuple_reverse(struct sonde_tuple *t)
{
	struct sonde_tuple r = *t;
	__builtin_memcpy(t->saddr, r.daddr, 16);
	__builtin_memcpy(t->daddr, r.saddr, 16);
	t->sport = r.dport;
	t->dport = r.sport;
}

/* kprobe programs get their arguments as plain numbers, not BTF-typed pointers: the verifier
 * refuses direct loads through them, so they read kernel structs with BPF_CORE_READ
 * (bpf_probe_read_kernel at CO-RE relocated offsets), through these variants of the readers
 * above. */

/* sonde_net, for kprobe programs. */
static __always_inline struct sonde_netns sonde_net_core_read(const struct net *net)
{
	struct sonde_netns n = {};

	if (!net)
		return n;
	n.inum = BPF_CORE_READ(net, ns.inum);
	if (bpf_core_field_exists(struct net___sonde, net_cookie))
		n.cookie = BPF_CORE_READ((const struct net___sonde *)net, net_cookie);
	return n;
}

/* sonde_skb_netns without rx_sk, for kprobe programs. */
static __always_inline struct sonde_netns sonde_skb_netns_core_read(const struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	struct sock *sk;
	struct sonde_netns none = {};

	if (dev)
		return sonde_net_core_read(BPF_CORE_READ(dev, nd_net.net));
	sk = BPF_CORE_READ(skb, sk);
	if (sk)
		return sonde_net_core_read(BPF_CORE_READ(sk, __sk_common.skc_net.net));
	return none;
}

/* sonde_skb_tuple, for kprobe programs. */
static __always_inline void sonde_skb_tuple_core_read(const struct sk_buff *skb,
						      struct sonde_tuple *t)
{
	sonde_headers_tuple(BPF_CORE_READ(skb, head), BPF_CORE_READ(skb, network_header),
			    bpf_ntohs(BPF_CORE_READ(skb, protocol)), t);
}

/* Adds `n` to a per-CPU hash counter, creating the slot on first use (see sonde_count). */
static __always_inline void sonde_add(void *map, const void *key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, key);
	if (v)
		*v += n;
	else
		bpf_map_update_elem(map, key, &n, BPF_NOEXIST);
}

/* A packet's time in a table keyed by skb address (an LRU hash of these): when it reached the
 * stage it is in, and its data buffer, so that a freed skb's address, soon reused, is not
 * taken for the packet that had it. A taken stamp is zeroed in place, not deleted: the next
 * packet at that address (slab addresses come back all the time) overwrites the row instead
 * of paying for an LRU insert and a delete per packet. */
struct sonde_skb_stamp {
	__u64 ns;   /* 0: taken */
	__u64 head; /* skb->head when stamped */
};

/* Stamps `skb` with `ns` in `map`, in place when its address has a row already. */
static __always_inline void sonde_skb_stamp(void *map, const struct sk_buff *skb, __u64 ns)
{
	__u64 key = (__u64)skb;
	struct sonde_skb_stamp *s = bpf_map_lookup_elem(map, &key), fresh;

	if (s) {
		s->ns = ns;
		s->head = (__u64)skb->head;
		return;
	}
	fresh.ns = ns;
	fresh.head = (__u64)skb->head;
	bpf_map_update_elem(map, &key, &fresh, BPF_NOEXIST);
}

/* The row of `skb`'s address when it holds a stamp, NULL otherwise; with `head` (skb->head,
 * 0 when the skb may be freed already and only its address can be used) the row must be
 * that buffer's. */
static __always_inline struct sonde_skb_stamp *sonde_skb_stamped(void *map, const void *skb,
								  __u64 head)
{
	__u64 key = (__u64)skb;
	struct sonde_skb_stamp *s = bpf_map_lookup_elem(map, &key);

	if (!s || !s->ns || (head && s->head != head))
		return NULL;
	return s;
}

/* Takes `skb`'s stamp from `map`: its time, 0 when it has none. */
static __always_inline __u64 sonde_skb_take(void *map, const struct sk_buff *skb)
{
	struct sonde_skb_stamp *s = sonde_skb_stamped(map, skb, (__u64)skb->head);
	__u64 ns;

	if (!s)
		return 0;
	ns = s->ns;
	s->ns = 0;
	return ns;
}

static __always_inline __u32 sonde_log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

/* The log2 histogram slot of a duration (see SONDE_LOG2_SLOTS): the smallest k with
 * ceil(ns / 1000) <= 2^k, or SONDE_LOG2_SLOTS when it is above every bucket. */
static __always_inline __u32 sonde_log2_slot(__u64 ns)
{
	__u64 us = (ns + 999) / 1000;
	__u32 slot;

	if (us <= 1)
		return 0;
	us -= 1;
	if (us >> 32)
		return SONDE_LOG2_SLOTS;
	slot = sonde_log2_u32((__u32)us) + 1;
	return slot > SONDE_LOG2_SLOTS ? SONDE_LOG2_SLOTS : slot;
}

/* Declares `sonde_rng`, a per-CPU xorshift64 state, and sonde_one_in(n): true for about one
 * call in n, at random (n <= 1: every call). For sampling on per-packet paths, where
 * bpf_get_prandom_u32 costs several times an empty program's run (measured on 6.18): it only
 * seeds each CPU's state, at that CPU's first draw, so no two loads draw the same sequence. */
#define SONDE_SAMPLER                                                          \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                       \
		__uint(max_entries, 1);                                        \
		__type(key, __u32);                                            \
		__type(value, __u64);                                          \
	} sonde_rng SEC(".maps");                                              \
	static __always_inline bool sonde_one_in(__u64 n)                      \
	{                                                                      \
		__u32 zero = 0;                                                \
		__u64 *state, x;                                               \
									       \
		if (n <= 1)                                                    \
			return true;                                           \
		state = bpf_map_lookup_elem(&sonde_rng, &zero);                \
		if (!state)                                                    \
			return true;                                           \
		x = *state;                                                    \
		if (!x) /* this CPU's first draw */                       \
			x = (__u64)bpf_get_prandom_u32() << 32 | bpf_get_prandom_u32() | 1; \
		x ^= x << 13;                                                  \
		x ^= x >> 7;                                                   \
		x ^= x << 17;                                                  \
		*state = x;                                                    \
		/* The high half scaled into [0, n): 0 one time in n. */      \
		return (((x >> 32) * n) >> 32) == 0;                           \
	}

/* Declares the probe's `probe_params` array (struct sonde_params, written by the agent like
 * probe_config) and sonde_param(i) to read value i of it, 0 when unset. */
#define SONDE_PARAMS                                                            \
	struct {                                                                \
		__uint(type, BPF_MAP_TYPE_ARRAY);                               \
		__uint(max_entries, 1);                                         \
		__type(key, __u32);                                             \
		__type(value, struct sonde_params);                             \
	} probe_params SEC(".maps");                                            \
	static __always_inline __u64 sonde_param(__u32 i)                       \
	{                                                                       \
		__u32 zero = 0;                                                 \
		struct sonde_params *p = bpf_map_lookup_elem(&probe_params, &zero); \
		return p && i < 4 ? p->values[i & 3] : 0;                       \
	}

#endif
