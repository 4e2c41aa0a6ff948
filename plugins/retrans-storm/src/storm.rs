//! Storm detection, free of host calls: retransmits per workload counted in one-second
//! buckets over a sliding window, and the rising and falling edges of "count >= threshold".

use std::collections::HashMap;

use sonde_plugin::Workload;

const NS_PER_SEC: u64 = 1_000_000_000;

/// A storm starting or ending, as decided at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// The count over the window reached the threshold.
    Started {
        workload: Workload,
        /// The network namespace of the workload's latest retransmit.
        netns: u32,
        retransmits: u64,
    },
    /// The count over the window fell below the threshold again.
    Ended {
        workload: Workload,
        retransmits: u64,
    },
}

/// Counts of one workload: a ring of `window` one-second buckets, each tagged with its second.
#[derive(Debug)]
struct PodWindow {
    buckets: Vec<(u64, u64)>,
    netns: u32,
    in_storm: bool,
}

#[derive(Debug)]
pub struct Detector {
    window_seconds: u64,
    threshold: u64,
    pods: HashMap<Workload, PodWindow>,
}

impl Detector {
    /// `window_seconds` and `threshold` must be at least 1 (the config checks it).
    pub fn new(window_seconds: u64, threshold: u64) -> Self {
        Detector {
            window_seconds: window_seconds.max(1),
            threshold: threshold.max(1),
            pods: HashMap::new(),
        }
    }

    /// Counts one retransmit of `workload` at `time_ns` (nanoseconds since the Unix epoch).
    pub fn record(&mut self, workload: &Workload, netns: u32, time_ns: u64) {
        let window = self.window_seconds;
        let pod = match self.pods.get_mut(workload) {
            Some(pod) => pod,
            None => self
                .pods
                .entry(workload.clone())
                .or_insert_with(|| PodWindow {
                    buckets: vec![(0, 0); window as usize],
                    netns,
                    in_storm: false,
                }),
        };
        pod.netns = netns;
        let sec = time_ns / NS_PER_SEC;
        let bucket = &mut pod.buckets[(sec % window) as usize];
        if bucket.0 == sec {
            bucket.1 += 1;
        } else if sec > bucket.0 {
            *bucket = (sec, 1);
        }
        // Else the bucket already holds a second at least a window later: this retransmit is
        // older than any window still to come.
    }

    fn window_count(&self, pod: &PodWindow, now_sec: u64) -> u64 {
        // The window is the seconds (now - window, now], plus any a little ahead of the
        // tick's clock.
        let oldest = (now_sec + 1).saturating_sub(self.window_seconds);
        pod.buckets
            .iter()
            .filter(|(sec, _)| *sec >= oldest)
            .map(|(_, n)| n)
            .sum()
    }

    /// Evaluates every workload at `now_ns`: a storm starts when the window's count reaches
    /// the threshold and ends (re-arming) when it falls below. Forgets quiet workloads.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Edge> {
        let now_sec = now_ns / NS_PER_SEC;
        let mut edges = Vec::new();
        let mut quiet = Vec::new();
        for (workload, pod) in &self.pods {
            let count = self.window_count(pod, now_sec);
            if !pod.in_storm && count >= self.threshold {
                edges.push(Edge::Started {
                    workload: workload.clone(),
                    netns: pod.netns,
                    retransmits: count,
                });
            } else if pod.in_storm && count < self.threshold {
                edges.push(Edge::Ended {
                    workload: workload.clone(),
                    retransmits: count,
                });
            }
            if count == 0 {
                quiet.push(workload.clone());
            }
        }
        for edge in &edges {
            let (workload, in_storm) = match edge {
                Edge::Started { workload, .. } => (workload, true),
                Edge::Ended { workload, .. } => (workload, false),
            };
            if let Some(pod) = self.pods.get_mut(workload) {
                pod.in_storm = in_storm;
            }
        }
        for workload in quiet {
            if self.pods.get(&workload).is_some_and(|pod| !pod.in_storm) {
                self.pods.remove(&workload);
            }
        }
        edges.sort_by(|a, b| edge_workload(a).cmp(edge_workload(b)));
        edges
    }
}

#[cfg(test)]
impl Detector {
    /// Retransmits of `workload` in the window ending at `now_ns`.
    fn count(&self, workload: &Workload, now_ns: u64) -> u64 {
        self.pods
            .get(workload)
            .map_or(0, |pod| self.window_count(pod, now_ns / NS_PER_SEC))
    }

    /// Workloads tracked: with retransmits in the window, or in a storm.
    fn tracked(&self) -> usize {
        self.pods.len()
    }
}

fn edge_workload(edge: &Edge) -> &Workload {
    match edge {
        Edge::Started { workload, .. } | Edge::Ended { workload, .. } => workload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;
    const T0: u64 = 1_700_000_000 * S;

    fn web() -> Workload {
        Workload::new("shop", "web-1")
    }

    fn record_n(d: &mut Detector, w: &Workload, n: u64, at: u64) {
        for _ in 0..n {
            d.record(w, 42, at);
        }
    }

    #[test]
    fn counts_only_the_last_window() {
        let mut d = Detector::new(10, 100);
        record_n(&mut d, &web(), 5, T0);
        record_n(&mut d, &web(), 3, T0 + 4 * S);
        record_n(&mut d, &web(), 2, T0 + 9 * S + S / 2);
        assert_eq!(d.count(&web(), T0 + 9 * S), 10);
        // At T0+10s the first second has left the window.
        assert_eq!(d.count(&web(), T0 + 10 * S), 5);
        assert_eq!(d.count(&web(), T0 + 14 * S), 2);
        assert_eq!(d.count(&web(), T0 + 18 * S), 2);
        assert_eq!(d.count(&web(), T0 + 19 * S), 0);
        assert_eq!(d.count(&Workload::new("shop", "other"), T0), 0);
    }

    #[test]
    fn a_bucket_is_reused_a_window_later() {
        let mut d = Detector::new(3, 100);
        record_n(&mut d, &web(), 4, T0);
        record_n(&mut d, &web(), 1, T0 + 3 * S); // same slot, next lap
        assert_eq!(d.count(&web(), T0 + 3 * S), 1);
        // A late retransmit from a second the ring has already lapped is not counted.
        d.record(&web(), 42, T0);
        assert_eq!(d.count(&web(), T0 + 3 * S), 1);
    }

    #[test]
    fn storm_starts_once_and_rearms_below_the_threshold() {
        let mut d = Detector::new(10, 100);
        record_n(&mut d, &web(), 99, T0);
        assert_eq!(d.tick(T0), vec![]);
        d.record(&web(), 7, T0);
        let started = Edge::Started {
            workload: web(),
            netns: 7,
            retransmits: 100,
        };
        assert_eq!(d.tick(T0 + S / 2), vec![started]);
        // Still above: no new edge, however many more arrive.
        record_n(&mut d, &web(), 50, T0 + 2 * S);
        assert_eq!(d.tick(T0 + 3 * S), vec![]);
        // The first 100 leave the window at T0+10s; 50 remain, below the threshold.
        let ended = Edge::Ended {
            workload: web(),
            retransmits: 50,
        };
        assert_eq!(d.tick(T0 + 10 * S), vec![ended]);
        assert_eq!(d.tick(T0 + 11 * S), vec![]);
        // Re-armed: crossing again starts a second storm.
        record_n(&mut d, &web(), 60, T0 + 11 * S);
        match d.tick(T0 + 11 * S).as_slice() {
            [Edge::Started { retransmits, .. }] => assert_eq!(*retransmits, 110),
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn workloads_are_independent_and_quiet_ones_are_forgotten() {
        let mut d = Detector::new(5, 10);
        let db = Workload::new("shop", "db-0");
        record_n(&mut d, &web(), 10, T0);
        record_n(&mut d, &db, 9, T0);
        let edges = d.tick(T0);
        assert_eq!(edges.len(), 1);
        assert!(matches!(&edges[0], Edge::Started { workload, .. } if *workload == web()));
        assert_eq!(d.tracked(), 2);
        // Both go quiet: web's storm ends, and neither is tracked any more.
        assert_eq!(d.tick(T0 + 5 * S).len(), 1);
        assert_eq!(d.tracked(), 0);
    }
}
