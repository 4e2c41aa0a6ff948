/* Plain types shared by every Sonde probe and its Rust mirror (ebpf-core/src/record.rs).
 * Only fixed-width integers: this header is read by clang for the kernel side and mirrored
 * field by field in Rust, with size and offset assertions there. */
#ifndef SONDE_H
#define SONDE_H

/* Address family of a tuple, as in the kernel's AF_* numbers. */
#define SONDE_AF_INET 2
#define SONDE_AF_INET6 10

/* Flags in sonde_config.flags. */
#define SONDE_F_EVENTS (1u << 0) /* emit per-event records into the ring buffer */
#define SONDE_F_STACK (1u << 1)  /* packet_drop: collect a kernel stack id per event */

/* Slots of the per-CPU `stats` array. */
#define SONDE_STAT_LOST 0       /* ring buffer full: record could not be reserved */
#define SONDE_STAT_SUPPRESSED 1 /* record not emitted because the rate limit was hit */
#define SONDE_STAT_MAX 2

/* A connection or packet 5-tuple. Addresses in network order (IPv4 in the first 4 bytes),
 * ports in host order. */
struct sonde_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 protocol;
	__u8 pad[2];
};

/* A network namespace as probes record it, in counter keys and events. */
struct sonde_netns {
	__u64 cookie; /* never reused while the system runs; 0 before Linux 5.12, which sets no
		       * cookie when it makes a namespace */
	__u32 inum;   /* its inode, as /proc/PID/ns/net shows: reused once the namespace is gone */
	__u32 pad;
};

/* Live configuration of one probe: slot 0 of its `config` array, written by the agent and
 * read on every hit, so a probe is reconfigured without reloading (and without losing its
 * counters). */
struct sonde_config {
	__u64 rate;         /* events per second per CPU; 0 = unlimited (and no ns_rate either) */
	__u64 burst;        /* token bucket depth in events */
	__u32 wakeup_bytes; /* wake the agent once this much data is waiting */
	__u32 flags;        /* SONDE_F_* */
	__u64 ns_rate;      /* events per second from one network namespace; 0 = no such limit */
	__u64 ns_burst;     /* its token bucket depth in events */
};

/* A network namespace's event budget, shared by the CPUs (see sonde_event_allowed), and the
 * events it had suppressed: the value of a probe's `ns_buckets` map, keyed by namespace. */
struct sonde_ns_bucket {
	__u64 tokens_ns;
	__u64 last_ns;
	__u64 suppressed;
};

/* Log2 latency histograms counted in the kernel: slot k counts values of at most 2^k
 * microseconds (and more than 2^(k-1)), so each slot is one Prometheus bucket with
 * le = 2^k us; SONDE_LOG2_SLOTS counts what is above the last bucket (only in +Inf). */
#define SONDE_LOG2_SLOTS 27 /* buckets up to 2^26 us, about 67 s */

/* Probe-specific live settings: slot 0 of a probe's `probe_params` array, for the probes that
 * declare it (SONDE_PARAMS in sonde.bpf.h); what each value means is in <probe>.h. */
struct sonde_params {
	__u64 values[4];
};

#endif
