//! Workload labels from enrichment plugins (capability `enrich`), added to every event of a
//! workload as its `labels` field. Each plugin is asked once per workload, off the data path:
//! the first events of a workload go out before the answer comes, the rest carry it. The
//! answers are kept until the plugin is reloaded, charged to the plugin's memory budget; when
//! it is spent, the answers for pods that are gone make room.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::event::{Event, Labels};
use crate::topology::Workload;

/// Workloads waiting for an answer, per plugin, at most.
const PENDING: usize = 1024;

/// What keeping an answer is charged to its plugin's memory budget: the map's entry, the
/// workload's names and the labels (the strings and their headers).
pub fn answer_cost(workload: &Workload, labels: &[(String, String)]) -> u64 {
    let strings: usize = labels.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
    (128 + workload.namespace.len() + workload.pod.len() + strings) as u64
}

/// One enrichment plugin's answers and its queue of questions.
pub struct Enricher {
    pub plugin: String,
    answers: RwLock<HashMap<Workload, Labels>>,
    asked: Mutex<HashSet<Workload>>,
    questions: mpsc::Sender<Workload>,
}

impl Enricher {
    /// A new enricher and the queue its plugin answers from.
    pub fn new(plugin: &str) -> (Arc<Self>, mpsc::Receiver<Workload>) {
        let (tx, rx) = mpsc::channel(PENDING);
        let e = Arc::new(Enricher {
            plugin: plugin.to_string(),
            answers: RwLock::new(HashMap::new()),
            asked: Mutex::new(HashSet::new()),
            questions: tx,
        });
        (e, rx)
    }

    /// Records the plugin's answer for a workload; returns the answer it replaces.
    pub fn answer(&self, workload: Workload, labels: Vec<(String, String)>) -> Option<Labels> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&workload);
        self.answers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workload, Arc::from(labels))
    }

    /// Forgets the answers for workloads not in `keep` (pods gone); returns what the
    /// forgotten answers cost (see [`answer_cost`]).
    pub fn forget_all_but(&self, keep: &HashSet<Workload>) -> u64 {
        // Questions whose answer was not kept are not asked again while their pod lives.
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| keep.contains(w));
        let mut freed = 0;
        self.answers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w, labels| {
                let kept = keep.contains(w);
                if !kept {
                    freed += answer_cost(w, labels);
                }
                kept
            });
        freed
    }

    fn labels(&self, workload: &Workload) -> Option<Labels> {
        if let Some(l) = self
            .answers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
        {
            return Some(Arc::clone(l));
        }
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.len() < PENDING
            && asked.insert(workload.clone())
            && self.questions.try_send(workload.clone()).is_err()
        {
            asked.remove(workload);
        }
        None
    }
}

/// The enrichment plugins running now.
#[derive(Default)]
pub struct Enrichers {
    list: RwLock<Vec<Arc<Enricher>>>,
}

impl Enrichers {
    /// Adds a plugin's enricher, replacing its previous version's (whose answers go).
    pub fn set(&self, enricher: Arc<Enricher>) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        list.retain(|e| e.plugin != enricher.plugin);
        list.push(enricher);
    }

    /// Removes a plugin's enricher, if it is still this one.
    pub fn remove(&self, enricher: &Arc<Enricher>) {
        self.list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| !Arc::ptr_eq(e, enricher));
    }

    /// Sets the labels of an event's workload, merging every plugin's (later ones win).
    pub fn label(&self, event: &mut Event) {
        let Some(workload) = &event.workload else {
            return;
        };
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<Labels> = list
            .iter()
            .filter_map(|e| e.labels(workload))
            .filter(|l| !l.is_empty())
            .collect();
        event.labels = match found.len() {
            0 => None,
            1 => found.pop(),
            _ => {
                let mut merged: Vec<(String, String)> = Vec::new();
                for (k, v) in found.iter().flat_map(|l| l.iter()) {
                    merged.retain(|(mk, _)| mk != k);
                    merged.push((k.clone(), v.clone()));
                }
                Some(Arc::from(merged))
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Workload {
        Workload {
            namespace: Arc::from("default"),
            pod: Arc::from(name),
        }
    }

    #[test]
    fn answers_are_replaced_and_those_of_gone_pods_forgotten_with_their_cost() {
        let (e, _questions) = Enricher::new("labels");
        let labels = |v: &str| vec![("team".to_string(), v.to_string())];
        assert!(e.answer(pod("a"), labels("x")).is_none());
        let old = e
            .answer(pod("a"), labels("yy"))
            .expect("the answer replaced");
        assert_eq!(&old[..], &labels("x")[..]);
        e.answer(pod("b"), labels("z"));
        let keep: HashSet<Workload> = [pod("a")].into_iter().collect();
        let freed = e.forget_all_but(&keep);
        assert_eq!(freed, answer_cost(&pod("b"), &labels("z")));
        assert!(e.labels(&pod("a")).is_some());
        assert_eq!(e.forget_all_but(&keep), 0, "nothing more to forget");
        assert!(answer_cost(&pod("a"), &labels("yy")) > answer_cost(&pod("a"), &labels("x")));
    }
}
