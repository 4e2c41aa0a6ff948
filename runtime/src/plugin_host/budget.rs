//! Memory budgets: one per loaded plugin, covering everything the plugin can make grow —
//! all its instance's linear memories and tables together (through wasmtime's
//! `ResourceLimiter`), the host-side objects it creates (metric families and series,
//! histogram buckets) and the enrichment answers the agent keeps for it — and
//! a total for all plugins together, against which each plugin's budget is admitted at load,
//! so that N bundles cannot add up to an OOM kill.
//!
//! Host objects are charged by an estimate of what they hold (a fixed cost plus their
//! strings and buckets), which errs on the high side; see [`family_cost`], [`series_cost`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why memory was refused (sizes in MiB).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// A plugin's `spec.limits.memory` does not fit beside the others' in the total.
    #[error(
        "spec.limits.memory: {asked} MiB more would take all plugins to {total} MiB, over \
         plugins.limits.totalMemory ({limit} MiB)"
    )]
    OverTotal { asked: u64, total: u64, limit: u64 },
    /// The plugin has used all of its own budget.
    #[error(
        "the plugin's memory budget (spec.limits.memory, {limit} MiB: linear memories, \
         tables, host objects and enrichment answers together) is spent"
    )]
    Spent { limit: u64 },
}
use std::sync::Arc;

use wasmtime::ResourceLimiter;

/// What one table element is charged: wasmtime keeps a pointer per element, and a
/// function reference more beside it.
pub const TABLE_ELEMENT_BYTES: u64 = 16;

/// All plugins' memory together (`plugins.limits.totalMemory`): each running plugin holds
/// its whole budget (`spec.limits.memory`) from the moment it is admitted, so a plugin is
/// refused at load if the budgets would add up to more, and no plugin can take memory the
/// others were promised.
#[derive(Debug)]
pub struct Total {
    limit: u64,
    /// Budgets held, by plugin.
    held: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Total {
    pub fn new(limit: u64) -> Arc<Total> {
        Arc::new(Total {
            limit,
            held: Default::default(),
        })
    }

    /// Admits `plugin` with `budget` bytes (a new version of a running plugin replaces what
    /// the old one held), or says why not.
    pub fn admit(&self, plugin: &str, budget: u64) -> Result<(), BudgetError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let others: u64 = held
            .iter()
            .filter(|(p, _)| p.as_str() != plugin)
            .map(|(_, b)| *b)
            .sum();
        if others.saturating_add(budget) > self.limit {
            return Err(BudgetError::OverTotal {
                asked: budget >> 20,
                total: (others + budget) >> 20,
                limit: self.limit >> 20,
            });
        }
        held.insert(plugin.to_string(), budget);
        Ok(())
    }

    /// What a plugin holds now.
    pub fn held(&self, plugin: &str) -> Option<u64> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .copied()
    }

    /// A plugin stopped: its budget is free.
    pub fn release(&self, plugin: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin);
    }
}

/// One loaded plugin's budget (`spec.limits.memory`, at most `plugins.limits.memory`),
/// shared by its instance (a new one after a failure) and its enrichment answers.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the plugin's budget, or says it is spent.
    pub fn charge(&self, bytes: u64) -> Result<(), BudgetError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(bytes).filter(|n| *n <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| BudgetError::Spent {
                limit: self.limit >> 20,
            })
    }

    /// Gives back what a charge took for something that was not made after all.
    pub fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One holder's share of a plugin's budget: what an instance's memories and tables, or its
/// host objects, have taken. Given back when the holder goes, so that the instance made
/// after a failure starts from what the plugin's other holders (its enrichment answers) hold.
#[derive(Debug)]
pub struct Account {
    budget: Arc<Budget>,
    held: u64,
}

impl Account {
    pub fn new(budget: &Arc<Budget>) -> Account {
        Account {
            budget: Arc::clone(budget),
            held: 0,
        }
    }

    /// Takes `bytes` from the plugin's budget, or says it is spent.
    pub fn charge(&mut self, bytes: u64) -> Result<(), BudgetError> {
        self.budget.charge(bytes)?;
        self.held += bytes;
        Ok(())
    }

    /// Gives back what a charge took for something that was not made after all.
    pub fn release(&mut self, bytes: u64) {
        let bytes = bytes.min(self.held);
        self.budget.release(bytes);
        self.held -= bytes;
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

/// The `ResourceLimiter` of a plugin's store: linear memories and tables are charged to its
/// budget as they grow. A growth past it traps (the message says "growing memory beyond", so
/// the failure is counted as kind `memory`) rather than failing quietly, which guests take
/// for a bug of their own.
pub struct Limiter {
    pub account: Account,
}

/// Instances, tables and memories a component may have: components made from interpreters
/// (Python) hold dozens of core instances; what they use is bounded by the budget.
const MAX_INSTANCES: usize = 1000;
const MAX_TABLES: usize = 1000;
const MAX_MEMORIES: usize = 100;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current) as u64;
        self.account
            .charge(more)
            .map(|()| true)
            .map_err(|why| wasmtime::Error::msg(format!("growing memory beyond {why}")))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = (desired.saturating_sub(current) as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        self.account.charge(more).map(|()| true).map_err(|why| {
            wasmtime::Error::msg(format!("growing a table: growing memory beyond {why}"))
        })
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// What registering a metric family is charged: the family, its registry entry and its
/// strings, and its buckets.
pub fn family_cost(name: &str, help: &str, labels: &[String], buckets: usize) -> u64 {
    let strings: usize =
        name.len() * 2 + help.len() + labels.iter().map(|l| l.len()).sum::<usize>();
    (1024 + strings * 2 + buckets * 16) as u64
}

/// What a new series is charged: its values (kept twice, in the family and the handle
/// table) and, for a histogram, a count per bucket.
pub fn series_cost(values: &[String], buckets: usize) -> u64 {
    let strings: usize = values.iter().map(|v| v.len() + 24).sum();
    (256 + strings * 2 + (buckets + 2) * 16) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_admitted_against_the_total() {
        let total = Total::new(100 << 20);
        assert!(total.admit("a", 60 << 20).is_ok());
        let e = total.admit("b", 50 << 20).unwrap_err();
        assert_eq!(
            e,
            BudgetError::OverTotal {
                asked: 50,
                total: 110,
                limit: 100
            }
        );
        assert!(
            e.to_string()
                .contains("plugins.limits.totalMemory (100 MiB)"),
            "{e}"
        );
        // A new version of `a` replaces what the old one held.
        assert!(total.admit("a", 90 << 20).is_ok());
        assert!(total.admit("b", 20 << 20).is_err());
        total.release("a");
        assert!(total.admit("b", 50 << 20).is_ok());
        let budget = Budget::new(10);
        assert!(budget.charge(8).is_ok());
        assert_eq!(budget.charge(3), Err(BudgetError::Spent { limit: 0 }));
        assert_eq!(budget.used(), 8, "a refused charge takes nothing");
        budget.release(8);
        assert!(budget.charge(10).is_ok());
    }

    #[test]
    fn growth_past_the_budget_traps_as_memory() {
        let budget = Budget::new(1 << 20);
        let mut l = Limiter {
            account: Account::new(&budget),
        };
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        // Two memories share one budget.
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        let e = l.memory_growing(0, 1, None).unwrap_err().to_string();
        assert!(e.contains("growing memory beyond"), "{e}");
        let e = l.table_growing(0, 1, None).unwrap_err().to_string();
        assert!(e.contains("growing memory beyond"), "{e}");
        // An instance that goes gives back all it held: the next one starts from nothing.
        drop(l);
        assert_eq!(budget.used(), 0);
        let mut next = Account::new(&budget);
        assert!(next.charge(1 << 20).is_ok());
        next.release(2 << 20);
        assert_eq!(
            budget.used(),
            0,
            "an account gives back no more than it took"
        );
    }
}
