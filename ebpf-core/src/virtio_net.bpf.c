// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* virtio_net: latency of virtio-net control-virtqueue commands (promisc and multicast
 * filters, MAC address, VLANs, queue pairs, offloads...), per interface, class and command as
 * log2 histograms in the kernel, failed commands counted, and commands slower than a threshold
 * (or failed) as events.
 *
 * The guest sends a control command and spins until the host answers, holding RTNL: a slow
 * vswitch backend (OVS with vhost-user) stalls every `ip link set`, promisc, multicast and MQ
 * change of the node. The kprobe on entry of the function that sends a command notes when it
 * started, keyed by thread (the call is synchronous under RTNL); the kretprobe on its return
 * counts it. The function is virtnet_send_command(vi, class, cmd, out) before Linux 6.10;
 * since then virtnet_send_command_reply(vi, class, cmd, out, in), into which
 * virtnet_send_command is inlined (Debian 6.12's module has only the latter). Both return
 * whether the device acknowledged the command.
 *
 * kprobes, not fentry/fexit: the function lives in the virtio_net module, whose BTF is split
 * BTF on top of vmlinux's, which aya 0.14 cannot load to resolve an fentry target. For the
 * same reason `struct virtnet_info` (the driver's type) cannot be read with CO-RE; the
 * interface is found from vmlinux types only (see vi_netdev). */
#include "sonde.bpf.h"
#include "virtio_net.h"

/* netdev_priv()'s alignment of the private area before `struct net_device` had priv[]. */
#define NETDEV_ALIGN_ 32

SONDE_PARAMS

/* Linux 6.11 gave struct net_device its private area as a member, `u8 priv[]`, and
 * netdev_priv() returns dev->priv: "netdevice: define and allocate &net_device _properly_"
 * (Alexander Lobakin, net-next July 2024). Before, the private area followed the struct at
 * ALIGN(sizeof(struct net_device), NETDEV_ALIGN). */
struct net_device___new {
	u8 priv[0];
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct virtio_net_key);
	__type(value, __u64);
} commands SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct virtio_net_name);
} ifnames SEC(".maps");

/* A command being sent, by the sending thread (pid_tgid). */
struct virtio_net_inflight {
	__u64 start_ns;
	__u32 ifindex;
	__u8 class;
	__u8 cmd;
	__u8 pad[2];
	struct virtio_net_name name;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct virtio_net_inflight);
} inflight SEC(".maps");

/* The net_device whose private area `vi` (struct virtnet_info) is: netdev_priv() undone. */
static __always_inline struct net_device *vi_netdev(void *vi)
{
	struct net_device___new *n = NULL;

	if (bpf_core_field_exists(n->priv))
		return vi - bpf_core_field_offset(struct net_device___new, priv);
	return vi - ((bpf_core_type_size(struct net_device) + NETDEV_ALIGN_ - 1) &
		     ~(__u64)(NETDEV_ALIGN_ - 1));
}

SEC("kprobe/virtnet_send_command")
int BPF_KPROBE(virtnet_cmd_entry, void *vi, __u8 class, __u8 cmd)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct virtio_net_inflight f = {};
	struct net_device *dev;
	int ifindex;

	if (!vi)
		return 0;
	dev = vi_netdev(vi);
	ifindex = BPF_CORE_READ(dev, ifindex);
	/* A wrong layout reads garbage: count nothing rather than under a made-up interface. */
	if (ifindex <= 0)
		return 0;
	f.ifindex = ifindex;
	f.class = class;
	f.cmd = cmd;
	BPF_CORE_READ_STR_INTO(&f.name.name, dev, name);
	f.start_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&inflight, &id, &f, BPF_ANY);
	return 0;
}

SEC("kretprobe/virtnet_send_command")
int BPF_KRETPROBE(virtnet_cmd_return, long ret)
{
	__u64 id = bpf_get_current_pid_tgid(), now = bpf_ktime_get_ns(), ns;
	struct virtio_net_key k = {};
	struct virtio_net_inflight *f;
	struct virtio_net_event *e;
	struct sonde_config *cfg;
	/* The functions return bool: only the low byte of the register is defined. */
	__u8 ok = (__u8)ret != 0;

	f = bpf_map_lookup_elem(&inflight, &id);
	if (!f)
		return 0;
	ns = now - f->start_ns;
	k.ifindex = f->ifindex;
	k.class = f->class;
	k.cmd = f->cmd;
	bpf_map_update_elem(&ifnames, &k.ifindex, &f->name, BPF_ANY);
	k.kind = VIRTIO_NET_KIND_BUCKET;
	k.slot = sonde_log2_slot(ns);
	sonde_count(&commands, &k);
	k.kind = VIRTIO_NET_KIND_SUM;
	k.slot = 0;
	sonde_add(&commands, &k, ns);
	if (!ok) {
		k.kind = VIRTIO_NET_KIND_ERROR;
		sonde_count(&commands, &k);
	}
	if (ok && ns < sonde_param(VIRTIO_NET_PARAM_SLOW_NS))
		goto out;
	e = sonde_event_start(sizeof(*e), 0, &cfg);
	if (!e)
		goto out;
	e->duration_ns = ns;
	e->ifindex = k.ifindex;
	e->class = k.class;
	e->cmd = k.cmd;
	e->ok = ok;
	__builtin_memcpy(e->name, f->name.name, sizeof(e->name));
	sonde_submit(e, cfg);
out:
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}
