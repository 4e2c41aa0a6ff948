// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* The floor the benches measure probes against: a program that does nothing, on the hook of
 * the hottest probe (packet_drop's kfree_skb). What an empty program costs on a hook (the
 * tracing trampoline, and the run-time statistics' clock reads) is what any program there
 * pays; what a probe costs above it is the probe's own work. Loaded by sonde-bench, never by
 * the agent. */
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
