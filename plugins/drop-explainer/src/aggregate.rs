//! Drops gathered between ticks: one pending explanation per (netns, reason, location,
//! destination port) with the count since the last one, and per-batch counts for the
//! `sonde_plugin_drops_explained_total` counter. Built for floods: per drop, a few hash
//! look-ups on interned strings and no allocation once a key is pending.

use std::collections::HashMap;

use sonde_plugin::{OwnedFlow, PacketDrop, Workload};

use crate::explain::{self, RuleClass};

/// One explanation ready to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub netns: u32,
    pub workload: Option<Workload>,
    pub reason: String,
    pub location: String,
    pub rule_class: RuleClass,
    pub advice: String,
    /// Drops aggregated since the previous explanation of the same key.
    pub count: u64,
    /// The flow of the first of those drops.
    pub flow: OwnedFlow,
}

/// Drops to add to the counter of one label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCount {
    pub workload: Option<Workload>,
    pub rule_class: RuleClass,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    netns: u32,
    reason: u32,
    location: u32,
    dport: u16,
}

#[derive(Debug)]
struct Pending {
    count: u64,
    workload: Option<Workload>,
    flow: OwnedFlow,
}

/// Strings seen before, by number; reasons and kernel functions are few.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(s.to_string(), id);
        self.names.push(s.to_string());
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

#[derive(Debug)]
pub struct Aggregator {
    reasons: Interner,
    /// The rule class of each interned reason, by id.
    classes: Vec<RuleClass>,
    locations: Interner,
    pending: HashMap<Key, Pending>,
    /// Keys beyond this many wait for the next tick uncounted in explanations (they are
    /// still counted in the metric): a scan over many ports must not grow memory unbounded.
    max_pending: usize,
    overflow: u64,
    counts: HashMap<(u32, RuleClass), ClassCount>,
}

impl Aggregator {
    pub fn new(max_pending: usize) -> Self {
        Aggregator {
            reasons: Interner::default(),
            classes: Vec::new(),
            locations: Interner::default(),
            pending: HashMap::new(),
            max_pending,
            overflow: 0,
            counts: HashMap::new(),
        }
    }

    /// Counts one drop.
    pub fn add(&mut self, d: &PacketDrop) {
        let reason = self.reasons.id(d.reason);
        if reason as usize == self.classes.len() {
            self.classes.push(explain::rule_class(d.reason));
        }
        let rule_class = self.classes[reason as usize];
        let netns = d.envelope.netns;
        self.counts
            .entry((netns, rule_class))
            .or_insert_with(|| ClassCount {
                workload: d.envelope.workload.map(|w| w.to_workload()),
                rule_class,
                count: 0,
            })
            .count += 1;

        let key = Key {
            netns,
            reason,
            location: self.locations.id(d.location),
            dport: d.flow.dport,
        };
        if let Some(p) = self.pending.get_mut(&key) {
            p.count += 1;
        } else if self.pending.len() < self.max_pending {
            self.pending.insert(
                key,
                Pending {
                    count: 1,
                    workload: d.envelope.workload.map(|w| w.to_workload()),
                    flow: d.flow.to_owned_flow(),
                },
            );
        } else {
            self.overflow += 1;
        }
    }

    /// The counter increments since the last call, one per (netns, rule class).
    pub fn take_counts(&mut self) -> Vec<ClassCount> {
        self.counts.drain().map(|(_, c)| c).collect()
    }

    /// Up to `max` explanations, the keys with the most drops first; the rest stay pending
    /// (and keep counting) for the next tick.
    pub fn take_explanations(&mut self, max: usize) -> Vec<Explanation> {
        let mut keys: Vec<(u64, Key)> = self.pending.iter().map(|(k, p)| (p.count, *k)).collect();
        keys.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        keys.truncate(max);
        keys.into_iter()
            .filter_map(|(_, key)| {
                let p = self.pending.remove(&key)?;
                let reason = self.reasons.name(key.reason);
                let location = self.locations.name(key.location);
                let advice = explain::advice(&explain::Drop {
                    reason,
                    location,
                    protocol: &p.flow.protocol,
                    dport: p.flow.dport,
                    daddr: p.flow.daddr,
                    in_pod: p.workload.is_some(),
                });
                Some(Explanation {
                    netns: key.netns,
                    workload: p.workload,
                    reason: reason.to_string(),
                    location: location.to_string(),
                    rule_class: self.classes[key.reason as usize],
                    advice,
                    count: p.count,
                    flow: p.flow,
                })
            })
            .collect()
    }

    /// Puts back an explanation that could not be emitted: its drops join the next one.
    pub fn put_back(&mut self, e: Explanation) {
        let reason = self.reasons.id(&e.reason);
        if reason as usize == self.classes.len() {
            self.classes.push(e.rule_class);
        }
        let key = Key {
            netns: e.netns,
            reason,
            location: self.locations.id(&e.location),
            dport: e.flow.dport,
        };
        match self.pending.get_mut(&key) {
            Some(p) => p.count += e.count,
            None => {
                self.pending.insert(
                    key,
                    Pending {
                        count: e.count,
                        workload: e.workload,
                        flow: e.flow,
                    },
                );
            }
        }
    }

    /// Drops left out of explanations because too many keys were pending, since the last
    /// call.
    pub fn take_overflow(&mut self) -> u64 {
        std::mem::take(&mut self.overflow)
    }

    /// Keys waiting for an explanation.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use sonde_plugin::{Envelope, Flow, Stack, WorkloadRef};

    use super::*;

    fn drop(
        netns: u32,
        reason: &'static str,
        location: &'static str,
        sport: u16,
        dport: u16,
    ) -> PacketDrop<'static> {
        let pod: &'static str = format!("pod-{netns}").leak();
        PacketDrop {
            envelope: Envelope {
                time_ns: 1,
                node: "node-a",
                netns,
                workload: (netns != 1).then_some(WorkloadRef {
                    namespace: "shop",
                    pod,
                }),
            },
            flow: Flow {
                protocol: "udp",
                saddr: Some("198.18.0.1".parse().unwrap()),
                sport,
                daddr: Some("198.18.0.2".parse().unwrap()),
                dport,
                peer: None,
            },
            reason,
            location,
            stack: Stack::default(),
        }
    }

    #[test]
    fn one_explanation_per_key_with_the_count() {
        let mut a = Aggregator::new(100);
        for sport in 0..50 {
            a.add(&drop(
                7,
                "NETFILTER_DROP",
                "nft_do_chain",
                40000 + sport,
                9000,
            ));
        }
        a.add(&drop(7, "NETFILTER_DROP", "nft_do_chain", 1, 9001));
        a.add(&drop(8, "NETFILTER_DROP", "nft_do_chain", 1, 9000));
        a.add(&drop(7, "NO_SOCKET", "__udp4_lib_rcv", 1, 9000));
        let e = a.take_explanations(10);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].count, 50);
        assert_eq!(e[0].flow.sport, 40000, "the first drop's flow");
        assert_eq!((e[0].netns, e[0].flow.dport), (7, 9000));
        assert_eq!(e[0].rule_class, RuleClass::Netfilter);
        assert!(e[0].advice.contains("iptables"));
        assert!(e[1..].iter().all(|e| e.count == 1));
        let no_socket = e.iter().find(|e| e.reason == "NO_SOCKET").unwrap();
        assert_eq!(
            no_socket.advice,
            "nothing listens on udp port 9000 in this pod"
        );
        // Emitted keys start again from zero.
        assert!(a.take_explanations(10).is_empty());
        a.add(&drop(7, "NETFILTER_DROP", "nft_do_chain", 2, 9000));
        assert_eq!(a.take_explanations(10)[0].count, 1);
    }

    #[test]
    fn at_most_max_per_tick_the_rest_wait() {
        let mut a = Aggregator::new(100);
        for port in 0..5u16 {
            for _ in 0..=port {
                a.add(&drop(7, "NO_SOCKET", "__udp4_lib_rcv", 1, port));
            }
        }
        let first = a.take_explanations(2);
        assert_eq!(
            first.iter().map(|e| e.count).collect::<Vec<_>>(),
            vec![5, 4]
        );
        assert_eq!(a.pending(), 3);
        a.add(&drop(7, "NO_SOCKET", "__udp4_lib_rcv", 1, 0));
        let rest = a.take_explanations(10);
        assert_eq!(
            rest.iter().map(|e| e.count).collect::<Vec<_>>(),
            vec![3, 2, 2]
        );
    }

    #[test]
    fn put_back_merges_into_the_next_explanation() {
        let mut a = Aggregator::new(100);
        a.add(&drop(7, "TCP_CSUM", "tcp_v4_rcv", 1, 80));
        a.add(&drop(7, "TCP_CSUM", "tcp_v4_rcv", 1, 80));
        let e = a.take_explanations(1).remove(0);
        a.add(&drop(7, "TCP_CSUM", "tcp_v4_rcv", 1, 80));
        a.put_back(e);
        let e = a.take_explanations(1);
        assert_eq!(e[0].count, 3);
        assert_eq!(e[0].rule_class, RuleClass::Checksum);
    }

    #[test]
    fn pending_keys_are_capped() {
        let mut a = Aggregator::new(3);
        for port in 0..10 {
            a.add(&drop(7, "NO_SOCKET", "__udp4_lib_rcv", 1, port));
        }
        a.add(&drop(7, "NO_SOCKET", "__udp4_lib_rcv", 1, 0));
        assert_eq!(a.pending(), 3);
        assert_eq!(a.take_overflow(), 7);
        assert_eq!(a.take_overflow(), 0);
        assert_eq!(a.take_explanations(10)[0].count, 2);
    }

    #[test]
    fn counts_per_workload_and_class() {
        let mut a = Aggregator::new(100);
        a.add(&drop(7, "NETFILTER_DROP", "nft_do_chain", 1, 1));
        a.add(&drop(7, "NETFILTER_DROP", "ipt_do_table", 1, 2));
        a.add(&drop(7, "NO_SOCKET", "__udp4_lib_rcv", 1, 3));
        a.add(&drop(1, "NO_SOCKET", "__udp4_lib_rcv", 1, 3));
        let mut counts = a.take_counts();
        counts.sort_by(|x, y| (&x.workload, x.rule_class).cmp(&(&y.workload, y.rule_class)));
        let pod = Some(Workload::new("shop", "pod-7"));
        assert_eq!(
            counts,
            vec![
                ClassCount {
                    workload: None,
                    rule_class: RuleClass::Socket,
                    count: 1
                },
                ClassCount {
                    workload: pod.clone(),
                    rule_class: RuleClass::Netfilter,
                    count: 2
                },
                ClassCount {
                    workload: pod,
                    rule_class: RuleClass::Socket,
                    count: 1
                },
            ]
        );
        assert!(a.take_counts().is_empty());
        // The host's network namespace is explained as such.
        let host = a
            .take_explanations(10)
            .into_iter()
            .find(|e| e.netns == 1)
            .unwrap();
        assert_eq!(
            host.advice,
            "nothing listens on udp port 3 in the host network namespace"
        );
    }
}
