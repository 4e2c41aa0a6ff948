// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* socket_latency: the time from a packet's arrival to the application reading it, per network
 * namespace of the reading socket, and the packets a socket's receive buffer refused.
 *
 * Arrival is net/netif_receive_skb, stamped per skb address in the LRU `arrivals` table
 * (sonde_skb_stamp). A packet between two pods passes netif_receive_skb once per namespace it
 * enters (the host side of the sender's veth, then the receiving pod's eth0); every stamp
 * overwrites the last, so the time that counts is the last one: the arrival in the receiving
 * pod's namespace, where its socket lives.
 *
 * Only sampled passes are stamped (SOCKLAT_PARAM_SAMPLE_EVERY: each pass is, with a chance of
 * one in that many, drawn by sonde_one_in); the others touch no table. A packet stamped at one
 * pass must be stamped again at its later passes, or its time would count from the host's
 * side: `follow` holds the last SOCKLAT_FOLLOW packets sampled (skb and data buffer), and a
 * pass of one of them restamps it and forgets it. It is one array for every CPU (a packet's
 * next pass may run on another), written only when a packet is sampled or found there, and
 * written without locks: two CPUs filling one slot at once lose one packet from it, which
 * then keeps its earlier stamp, as does a packet whose next pass comes after
 * SOCKLAT_FOLLOW others were sampled. A packet's stamp taken by its socket takes it out of
 * `follow` too, or the next packet in its skb and buffer (both come back soon) would be
 * stamped as if it were the same. Stamps of packets never read by a socket (pure
 * ACKs, forwarded or dropped packets, TCP segments coalesced into another) are overwritten by
 * the next packet at the same address or make room in the LRU; a stamp also holds the
 * packet's data buffer, so a reused skb address is not mistaken for the packet that had it.
 *
 * TCP is read through skb/skb_copy_datagram_iovec, once per skb (the first read of an skb
 * removes its entry; later partial reads of the same skb are not counted again). UDP reads
 * small datagrams with a plain copy that has no tracepoint, so UDP is timed per socket:
 * sock/sk_data_ready moves the arrival of the datagram just queued (the receive queue's tail)
 * into the socket's `udp_queues` row under its queue position, and sock/sock_recv_length (a
 * recvmsg that consumed a datagram: no MSG_PEEK, no error) takes the oldest. Positions are
 * re-derived from the socket's queue length at each arrival, so datagrams discarded without a
 * read cannot shift later ones.
 *
 * Overflows: sock/sock_rcvqueue_full (sockets that queue with sock_queue_rcv_skb: raw, ICMP,
 * ...), udp/udp_fail_queue_rcv_skb with -ENOMEM (UDP checks its receive buffer itself), and
 * sock/sock_exceed_buf_limit for receive memory (TCP's and UDP's protocol memory limits). */
#include "sonde.bpf.h"
#include "socket_latency.h"

#define ENOMEM_ 12
#define MSG_PEEK_ 2
#define MSG_ERRQUEUE_ 0x2000
#define SK_MEM_RECV_ 1

SONDE_PARAMS
SONDE_SAMPLER

/* The packets sampled last, to restamp at their next pass (a power of two). */
#define SOCKLAT_FOLLOW 16

struct socklat_follow {
	__u64 skb[SOCKLAT_FOLLOW];
	__u64 head[SOCKLAT_FOLLOW];
	__u32 next;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklat_follow);
} follow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct socket_latency_key);
	__type(value, __u64);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sonde_skb_stamp);
} arrivals SEC(".maps");

/* A UDP socket's unread datagrams: the arrival of the one at queue position `seq` is in
 * slot seq % SOCKLAT_UDP_SLOTS, valid while that slot's seq matches. */
struct socklat_udp_slot {
	__u64 seq;
	__u64 ns;
};

struct socklat_udp_queue {
	__u64 read; /* datagrams read so far: the position of the next one to be read */
	struct socklat_udp_slot slots[SOCKLAT_UDP_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct socklat_udp_queue);
} udp_queues SEC(".maps");

/* An empty row to create udp_queues rows from (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklat_udp_queue);
} udp_queue_empty SEC(".maps");

static __always_inline void count(struct sonde_netns netns, __u8 kind)
{
	struct socket_latency_key key = {};

	key.netns = netns;
	key.kind = kind;
	sonde_count(&sockets, &key);
}

static __always_inline void observe(const struct sock *sk, __u64 arrived_ns)
{
	struct socket_latency_key key = {};
	__u64 now = bpf_ktime_get_ns(), ns;

	if (arrived_ns > now)
		return;
	ns = now - arrived_ns;
	key.netns = sonde_sk_netns(sk);
	key.kind = SOCKLAT_KIND_BUCKET;
	key.slot = sonde_log2_slot(ns);
	sonde_add(&sockets, &key, 1);
	key.kind = SOCKLAT_KIND_SUM;
	key.slot = 0;
	sonde_add(&sockets, &key, ns);
}

/* Takes the packet in `skb` with data buffer `head` out of `follow`; whether it was there. */
static __always_inline bool forget(struct socklat_follow *f, __u64 skb, __u64 head)
{
	__u32 i;

	for (i = 0; i < SOCKLAT_FOLLOW; i++) {
		if (f->skb[i] == skb && f->head[i] == head) {
			f->skb[i] = 0;
			return true;
		}
	}
	return false;
}

/* Takes `skb`'s arrival stamp (0: none) and, when it had one, forgets it in `follow`. */
static __always_inline __u64 take(const struct sk_buff *skb)
{
	__u64 ns = sonde_skb_take(&arrivals, skb);
	struct socklat_follow *f;
	__u32 zero = 0;

	if (!ns)
		return 0;
	f = bpf_map_lookup_elem(&follow, &zero);
	if (f)
		forget(f, (__u64)skb, (__u64)skb->head);
	return ns;
}

static __always_inline bool is_inet(const struct sock *sk, __u16 protocol)
{
	__u16 family = sk->__sk_common.skc_family;

	return (family == SONDE_AF_INET || family == SONDE_AF_INET6) && sk->sk_protocol == protocol;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(socklat_arrive, struct sk_buff *skb)
{
	__u16 proto = bpf_ntohs(skb->protocol);
	__u64 every, addr = (__u64)skb, head = (__u64)skb->head;
	struct socklat_follow *f;
	__u32 zero = 0, i;

	if (proto != ETH_P_IP && proto != ETH_P_IPV6)
		return 0;
	every = sonde_param(SOCKLAT_PARAM_SAMPLE_EVERY);
	if (every > 1) {
		f = bpf_map_lookup_elem(&follow, &zero);
		if (!f)
			return 0;
		/* Restamped at a later pass; else drawn, and followed when it is. */
		if (!forget(f, addr, head)) {
			if (!sonde_one_in(every))
				return 0;
			i = f->next++ & (SOCKLAT_FOLLOW - 1);
			f->skb[i] = addr;
			f->head[i] = head;
		}
	}
	sonde_skb_stamp(&arrivals, skb, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(socklat_tcp_read, const struct sk_buff *skb, int len)
{
	struct sock *sk = skb->sk;
	__u64 arrived;

	/* Sockets in TCP's receive queue own their skbs; UDP is timed per socket (below), and
	 * other sockets' skbs (unix, netlink) never arrived from a device. */
	if (!sk || !is_inet(sk, IPPROTO_TCP_))
		return 0;
	arrived = take(skb);
	if (arrived)
		observe(sk, arrived);
	return 0;
}

SEC("tp_btf/sk_data_ready")
int BPF_PROG(socklat_udp_queued, const struct sock *sk)
{
	struct socklat_udp_queue *q, *empty;
	struct sk_buff *skb;
	__u64 key = (__u64)sk, seq, ns;
	__u32 queued, unread, zero = 0;

	if (!is_inet(sk, IPPROTO_UDP_))
		return 0;
	queued = sk->sk_receive_queue.qlen;
	if (!queued)
		return 0;
	skb = sk->sk_receive_queue.prev;
	ns = take(skb);
	if (!ns)
		return 0;
	q = bpf_map_lookup_elem(&udp_queues, &key);
	if (!q) {
		empty = bpf_map_lookup_elem(&udp_queue_empty, &zero);
		if (!empty)
			return 0;
		bpf_map_update_elem(&udp_queues, &key, empty, BPF_NOEXIST);
		q = bpf_map_lookup_elem(&udp_queues, &key);
		if (!q)
			return 0;
	}
	/* The datagrams not yet read are the reader's queue, then the receive queue, whose tail
	 * is this one: its position is the next read's plus the unread ones before it. */
	unread = queued + BPF_CORE_READ((struct udp_sock *)sk, reader_queue.qlen);
	seq = q->read + unread - 1;
	q->slots[seq % SOCKLAT_UDP_SLOTS].seq = seq;
	q->slots[seq % SOCKLAT_UDP_SLOTS].ns = ns;
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(socklat_udp_read, struct sock *sk, int ret, int flags)
{
	struct socklat_udp_queue *q;
	struct socklat_udp_slot *slot;
	__u64 key = (__u64)sk, seq;

	if (ret < 0 || (flags & (MSG_PEEK_ | MSG_ERRQUEUE_)) || !sk || !is_inet(sk, IPPROTO_UDP_))
		return 0;
	q = bpf_map_lookup_elem(&udp_queues, &key);
	if (!q)
		return 0;
	seq = q->read;
	q->read = seq + 1;
	slot = &q->slots[seq % SOCKLAT_UDP_SLOTS];
	if (slot->seq == seq && slot->ns) {
		observe(sk, slot->ns);
		slot->ns = 0;
	}
	return 0;
}

SEC("tp_btf/sock_rcvqueue_full")
int BPF_PROG(socklat_rcvqueue_full, struct sock *sk, struct sk_buff *skb)
{
	count(sonde_sk_netns(sk), SOCKLAT_KIND_RCVQUEUE_FULL);
	return 0;
}

/* udp_fail_queue_rcv_skb passes the datagram too on newer kernels (6.12 does, 5.10 passes
 * only rc and sk); without it the datagram's arrival stays in `arrivals` until the next packet
 * at its address overwrites it or the LRU evicts it. */
static __always_inline int rcvbuf_full(int rc, struct sock *sk, struct sk_buff *skb)
{
	/* -ENOBUFS is a protocol memory limit, already seen by sock_exceed_buf_limit. */
	if (rc != -ENOMEM_ || !sk)
		return 0;
	if (skb)
		take(skb);
	count(sonde_sk_netns(sk), SOCKLAT_KIND_RCVQUEUE_FULL);
	return 0;
}

SEC("tp_btf/udp_fail_queue_rcv_skb")
int BPF_PROG(socklat_udp_rcvbuf_full, int rc, struct sock *sk, struct sk_buff *skb)
{
	return rcvbuf_full(rc, sk, skb);
}

SEC("tp_btf/udp_fail_queue_rcv_skb")
int BPF_PROG(socklat_udp_rcvbuf_full_noskb, int rc, struct sock *sk)
{
	return rcvbuf_full(rc, sk, NULL);
}

SEC("tp_btf/sock_exceed_buf_limit")
int BPF_PROG(socklat_exceed_buf_limit, struct sock *sk, struct proto *prot, long allocated,
	     int kind)
{
	if (kind != SK_MEM_RECV_)
		return 0;
	count(sonde_sk_netns(sk), SOCKLAT_KIND_EXCEED_BUF_LIMIT);
	return 0;
}
