// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* The floor the benches measure probes against: programs that do nothing, one on each hook a
 * probe runs on per packet (packet_drop's kfree_skb; tcp_rtt's tcp_probe; socket_latency's
 * netif_receive_skb; flow's and dns's TC classifiers). What an empty program costs on a hook
 * (the tracing trampoline or the classifier call, and the run-time statistics' clock reads)
 * is what any program there pays; what a probe costs above it is the probe's own work.
 * Loaded by sonde-bench and iperf-bench, never by the agent. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* packet_drop's hook. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(floor_kfree_skb)
{
	return 0;
}

/* tcp_rtt's hook. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(floor_tcp_probe)
{
	return 0;
}

/* socket_latency's per-packet hook. */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(floor_netif_receive_skb)
{
	return 0;
}

/* flow's and dns's hook: a classifier that lets every packet go on (TCX_NEXT, which is
 * TC_ACT_UNSPEC for a clsact filter). */
SEC("classifier")
int floor_tc(struct __sk_buff *skb)
{
	return -1;
}
