// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* netdev_latency: the transmit path of every interface, timed per packet between
 * net/net_dev_queue (handed to the device's qdisc, or straight to the driver for noqueue
 * devices such as veth), net/net_dev_start_xmit (handed to the driver) and net/net_dev_xmit
 * (the driver returned). Qdisc and driver times go into log2 histograms per interface in the
 * kernel; packets above a threshold become events.
 *
 * In-flight packets are stamped by skb address in an LRU hash (sonde_skb_stamp): stamps of
 * packets dropped by the qdisc, which never reach start_xmit, are overwritten by the next
 * packet at their address or age out. Freed skbs' addresses are soon reused, so a stamp also
 * holds the skb's data buffer (head), and one whose head differs at start_xmit is someone
 * else's. GSO segments made after net_dev_queue are new skbs, so they have a driver time but
 * no qdisc time. The skb may be freed by the driver before net_dev_xmit fires: there only its
 * address is used, never its contents. A packet sent through a stacked device (bond, vlan)
 * is timed on the lower device; the upper one's driver time is not seen.
 *
 * Each stage of a packet is timed with a chance of one in NETDEV_PARAM_SAMPLE_EVERY, drawn by
 * sonde_one_in: net_dev_queue stamps only the packets it draws, and start_xmit, having timed
 * the qdisc of a stamped one, draws again for the driver. A packet not drawn touches no table
 * at net_dev_queue and one lookup, which finds nothing, at each of start_xmit and net_dev_xmit.
 * Events come from timed packets only. */
#include "sonde.bpf.h"
#include "netdev_latency.h"

SONDE_PARAMS
SONDE_SAMPLER

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct netdev_key);
	__type(value, __u64);
} netdevs SEC(".maps");

/* Names of the interfaces that have counter slots, for the agent's `interface` label. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct netdev_iface);
	__type(value, struct netdev_name);
} ifnames SEC(".maps");

/* In-flight packets by skb address: when each reached the stage it is in. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sonde_skb_stamp);
} inflight SEC(".maps");

static __always_inline void iface_of(const struct net_device *dev, struct netdev_iface *i)
{
	i->netns = sonde_net(dev->nd_net.net);
	i->ifindex = dev->ifindex;
}

static __always_inline void observe(const struct net_device *dev, __u8 stage, __u64 ns,
				    __u32 len)
{
	struct netdev_key key = {};
	struct netdev_event *e;
	struct sonde_config *cfg;
	__u64 one = 1, *v;

	iface_of(dev, &key.iface);
	key.kind = stage * 2;
	key.slot = sonde_log2_slot(ns);
	v = bpf_map_lookup_elem(&netdevs, &key);
	if (v) {
		*v += 1;
	} else {
		/* A new slot: (re)record the interface's name, cheaply, once per slot. */
		struct netdev_name name = {};
		bpf_probe_read_kernel_str(name.name, sizeof(name.name), dev->name);
		bpf_map_update_elem(&ifnames, &key.iface, &name, BPF_ANY);
		bpf_map_update_elem(&netdevs, &key, &one, BPF_NOEXIST);
	}
	key.kind = stage * 2 + 1;
	key.slot = 0;
	sonde_add(&netdevs, &key, ns);
	if (ns < sonde_param(stage == NETDEV_STAGE_QUEUE ? NETDEV_PARAM_QUEUE_NS : NETDEV_PARAM_XMIT_NS))
		return;
	e = sonde_event_start(sizeof(*e), key.iface.netns.inum, &cfg);
	if (!e)
		return;
	e->duration_ns = ns;
	e->netns = key.iface.netns;
	e->ifindex = key.iface.ifindex;
	e->len = len;
	e->stage = stage;
	bpf_probe_read_kernel_str(e->name, sizeof(e->name), dev->name);
	sonde_submit(e, cfg);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(net_dev_queue, struct sk_buff *skb)
{
	if (sonde_one_in(sonde_param(NETDEV_PARAM_SAMPLE_EVERY)))
		sonde_skb_stamp(&inflight, skb, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(net_dev_start_xmit, const struct sk_buff *skb, const struct net_device *dev)
{
	struct sonde_skb_stamp *queued = sonde_skb_stamped(&inflight, skb, (__u64)skb->head);
	bool timed = sonde_one_in(sonde_param(NETDEV_PARAM_SAMPLE_EVERY));
	__u64 now;

	if (!queued && !timed)
		return 0;
	now = bpf_ktime_get_ns();
	if (queued) {
		if (queued->ns <= now)
			observe(dev, NETDEV_STAGE_QUEUE, now - queued->ns, skb->len);
		/* The driver's time, when drawn, from now; else the stamp is taken. */
		queued->ns = timed ? now : 0;
	} else {
		sonde_skb_stamp(&inflight, skb, now);
	}
	return 0;
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(net_dev_xmit, struct sk_buff *skb, int rc, struct net_device *dev, unsigned int len)
{
	__u64 now = bpf_ktime_get_ns(), start;
	/* The driver may have freed the skb: only its address is used. */
	struct sonde_skb_stamp *started = sonde_skb_stamped(&inflight, skb, 0);

	if (!started)
		return 0;
	start = started->ns;
	started->ns = 0;
	if (start <= now)
		observe(dev, NETDEV_STAGE_XMIT, now - start, len);
	return 0;
}
