/* dns: records shared by dns.bpf.c and dns.rs. */
#ifndef DNS_H
#define DNS_H
#include "sonde.h"

/* What a `dns_counts` slot counts (dns_count_key.kind). */
#define DNS_KIND_BUCKET 0 /* answered queries whose latency is in log2 slot `slot` */
#define DNS_KIND_SUM 1    /* sum of those latencies in nanoseconds (slot 0) */
#define DNS_KIND_RCODE 2  /* responses with rcode `slot` (answered or not) */

/* Key of the per-CPU `dns_counts` counters: by client address. */
struct dns_count_key {
	__u8 client[16]; /* IPv4 in the first 4 bytes */
	__u8 family;
	__u8 kind;
	__u8 slot;
	__u8 pad;
};

/* A query waiting for its response, keyed by the client's end and the DNS id. */
struct dns_query_key {
	__u8 client[16];
	__u16 client_port;
	__u16 id;
	__u8 family;
	__u8 protocol;
	__u8 pad[2];
};

struct dns_query {
	__u64 start_ns;  /* bpf_ktime_get_ns when the query passed */
	__u8 server[16];
	__u16 server_port;
	__u8 pad[6];
};

#endif
