//! Aggregation maps, bpftrace's `@name[key] = count()` and friends: named maps whose entries
//! are keyed by a tuple of script values and hold one kind of aggregate each (a count, a sum,
//! an average, a minimum, a maximum or a histogram). Bounded: entries per map, maps per
//! script, the bytes of a key and of all keys together are limited, and going past a limit
//! is an error that names it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use rhai::{Dynamic, ImmutableString, INT};

/// One value of a key tuple: the script values that are hashable and ordered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Unit,
    Bool(bool),
    Int(INT),
    /// A float by its bits, so that keys hash; `-0.0` and `0.0` are different keys.
    Float(u64),
    Str(ImmutableString),
}

impl KeyPart {
    /// A script value as a key part; values that are neither unit, bool, number nor string
    /// (arrays inside arrays, maps) are keyed by their text form.
    pub fn from_dynamic(v: &Dynamic) -> KeyPart {
        if v.is_unit() {
            KeyPart::Unit
        } else if let Ok(b) = v.as_bool() {
            KeyPart::Bool(b)
        } else if let Ok(i) = v.as_int() {
            KeyPart::Int(i)
        } else if let Ok(f) = v.as_float() {
            KeyPart::Float(f.to_bits())
        } else if let Some(s) = v.read_lock::<ImmutableString>() {
            KeyPart::Str(s.clone())
        } else if let Ok(c) = v.as_char() {
            KeyPart::Str(c.to_string().into())
        } else {
            KeyPart::Str(v.to_string().into())
        }
    }

    /// Rank of the variant, for ordering keys of mixed types.
    fn rank(&self) -> u8 {
        match self {
            KeyPart::Unit => 0,
            KeyPart::Bool(_) => 1,
            KeyPart::Int(_) | KeyPart::Float(_) => 2,
            KeyPart::Str(_) => 3,
        }
    }
}

impl Ord for KeyPart {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (KeyPart::Bool(a), KeyPart::Bool(b)) => a.cmp(b),
            (KeyPart::Int(a), KeyPart::Int(b)) => a.cmp(b),
            (KeyPart::Float(a), KeyPart::Float(b)) => {
                f64::from_bits(*a).total_cmp(&f64::from_bits(*b))
            }
            (KeyPart::Int(a), KeyPart::Float(b)) => (*a as f64).total_cmp(&f64::from_bits(*b)),
            (KeyPart::Float(a), KeyPart::Int(b)) => f64::from_bits(*a).total_cmp(&(*b as f64)),
            (KeyPart::Str(a), KeyPart::Str(b)) => a.as_str().cmp(b.as_str()),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for KeyPart {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A map key: a tuple of values (empty for `count("total")`).
pub type Key = Vec<KeyPart>;

/// A key argument: an array is a tuple, any other value a tuple of one.
pub fn key_of(key: &Dynamic) -> Key {
    match key.read_lock::<rhai::Array>() {
        Some(items) => items.iter().map(KeyPart::from_dynamic).collect(),
        None => vec![KeyPart::from_dynamic(key)],
    }
}

/// A number a script aggregates: integers stay exact, a float makes the aggregate a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn from_dynamic(v: &Dynamic) -> Option<Num> {
        if let Ok(i) = v.as_int() {
            Some(Num::Int(i))
        } else if let Ok(f) = v.as_float() {
            Some(Num::Float(f))
        } else {
            None
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map_or(Num::Float(a as f64 + b as f64), Num::Int),
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn total_cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }

    pub fn to_dynamic(self) -> Dynamic {
        match self {
            Num::Int(i) => Dynamic::from_int(i),
            Num::Float(f) => Dynamic::from_float(f),
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Bucket layout of a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buckets {
    /// Powers of two, as bpftrace's `hist`: below 0, `[0]`, `[1]`, `[2, 4)`, `[4, 8)`, ...
    Log2,
    /// `lhist(min, max, step)`: below `min`, `[min, min+step)`, ..., `[max, ...)`.
    Linear { min: i64, max: i64, step: i64 },
}

/// Power-of-two buckets: index 0 is below 0, 1 is `[0]`, 2 is `[1]`, then `[2^(i-2), 2^(i-1))`.
const LOG2_BUCKETS: usize = 66;
/// Linear histograms have at most this many buckets between `min` and `max`.
pub const MAX_LINEAR_BUCKETS: i64 = 1000;

/// Why an aggregation was refused: its histogram's layout, or a limit of the script's maps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("lhist step must be positive, not {step}")]
    StepNotPositive { step: i64 },
    #[error("lhist max ({max}) must be above min ({min})")]
    MaxNotAboveMin { min: i64, max: i64 },
    #[error("lhist max - min ({span}) must be a multiple of step ({step})")]
    NotMultipleOfStep { span: i128, step: i64 },
    #[error("lhist has {buckets} buckets, more than the limit of {MAX_LINEAR_BUCKETS}")]
    TooManyBuckets { buckets: i128 },
    #[error("cannot create map @{name}: the script has reached the limit of {limit} maps")]
    TooManyMaps { name: String, limit: usize },
    #[error("map @{name} holds {holds} values; it cannot also take {asked}()")]
    OtherKind {
        name: String,
        holds: &'static str,
        asked: &'static str,
    },
    #[error(
        "map @{name} is an lhist with min {min}, max {max}, step {step}; every lhist() into \
         it must use the same"
    )]
    OtherLayout {
        name: String,
        min: i64,
        max: i64,
        step: i64,
    },
    #[error("map @{name} has reached the limit of {limit} entries")]
    TooManyEntries { name: String, limit: usize },
    #[error("a key of map @{name} is {bytes} bytes, over the limit of {limit}")]
    KeyTooLong {
        name: String,
        bytes: usize,
        limit: usize,
    },
    #[error("the script's map keys have reached the limit of {limit} bytes")]
    KeysTooLong { limit: usize },
}

impl Buckets {
    pub fn linear(min: i64, max: i64, step: i64) -> Result<Buckets, MapError> {
        if step <= 0 {
            return Err(MapError::StepNotPositive { step });
        }
        if max <= min {
            return Err(MapError::MaxNotAboveMin { min, max });
        }
        let span = (max as i128) - (min as i128);
        if span % step as i128 != 0 {
            return Err(MapError::NotMultipleOfStep { span, step });
        }
        if span / step as i128 > MAX_LINEAR_BUCKETS as i128 {
            return Err(MapError::TooManyBuckets {
                buckets: span / step as i128,
            });
        }
        Ok(Buckets::Linear { min, max, step })
    }

    fn len(self) -> usize {
        match self {
            Buckets::Log2 => LOG2_BUCKETS,
            // In i128: max - min of extreme bounds does not fit an i64.
            Buckets::Linear { min, max, step } => {
                ((max as i128 - min as i128) / step as i128) as usize + 2
            }
        }
    }

    fn index(self, v: i64) -> usize {
        match self {
            Buckets::Log2 => match v {
                i64::MIN..=-1 => 0,
                0 => 1,
                _ => 2 + (63 - v.leading_zeros() as usize),
            },
            Buckets::Linear { min, max, step } => {
                if v < min {
                    0
                } else if v >= max {
                    self.len() - 1
                } else {
                    1 + ((v as i128 - min as i128) / step as i128) as usize
                }
            }
        }
    }

    /// The bucket's range `[low, high)`; `None` is unbounded on that side. `[0]` and `[1]` of
    /// power-of-two histograms are `[0, 1)` and `[1, 2)`.
    pub fn range(self, index: usize) -> (Option<i64>, Option<i64>) {
        match self {
            Buckets::Log2 => match index {
                0 => (None, Some(0)),
                1 => (Some(0), Some(1)),
                i => {
                    let low = 1i64 << (i - 2);
                    (Some(low), low.checked_mul(2))
                }
            },
            Buckets::Linear { min, max, step } => {
                if index == 0 {
                    (None, Some(min))
                } else if index == self.len() - 1 {
                    (Some(max), None)
                } else {
                    // Below max, so within i64 however far apart the bounds are.
                    let low = min as i128 + (index as i128 - 1) * step as i128;
                    (Some(low as i64), Some((low + step as i128) as i64))
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Buckets,
    pub counts: Box<[u64]>,
    pub count: u64,
    pub sum: Num,
}

impl Histogram {
    fn new(buckets: Buckets) -> Histogram {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()].into_boxed_slice(),
            count: 0,
            sum: Num::Int(0),
        }
    }

    fn add(&mut self, v: i64) {
        self.counts[self.buckets.index(v)] += 1;
        self.count += 1;
        self.sum = self.sum.add(Num::Int(v));
    }

    /// The buckets from the first to the last that counted something (as bpftrace prints
    /// them): (index, count).
    pub fn shown(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let first = self.counts.iter().position(|&c| c > 0).unwrap_or(0);
        let last = self.counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        let shown = if self.count == 0 { 0 } else { last + 1 - first };
        self.counts
            .iter()
            .copied()
            .enumerate()
            .skip(first)
            .take(shown)
    }
}

/// What an aggregation function was, so a map never mixes kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Hist,
    Lhist,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Count => "count",
            Kind::Sum => "sum",
            Kind::Avg => "avg",
            Kind::Min => "min",
            Kind::Max => "max",
            Kind::Hist => "hist",
            Kind::Lhist => "lhist",
        }
    }
}

/// The aggregate of one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Count(u64),
    Sum(Num),
    Avg { sum: Num, count: u64 },
    Min(Num),
    Max(Num),
    Hist(Histogram),
}

impl Value {
    /// The number the entry stands for: what `lookup` returns and what entries are sorted by
    /// (a histogram's count).
    pub fn number(&self) -> Num {
        match self {
            Value::Count(n) => Num::Int(*n as i64),
            Value::Sum(s) | Value::Min(s) | Value::Max(s) => *s,
            Value::Avg { sum, count } => avg(*sum, *count),
            Value::Hist(h) => Num::Int(h.count as i64),
        }
    }
}

/// An average: exact integers stay integers, as in bpftrace when it divides evenly.
fn avg(sum: Num, count: u64) -> Num {
    if count == 0 {
        return Num::Int(0);
    }
    match sum {
        Num::Int(s) if s % count as i64 == 0 => Num::Int(s / count as i64),
        s => Num::Float(s.as_f64() / count as f64),
    }
}

#[derive(Debug, Clone)]
pub struct Map {
    pub kind: Kind,
    /// For histograms: the layout every entry shares.
    pub buckets: Option<Buckets>,
    /// aHash: keys hash several strings per event, and SipHash would double their cost.
    pub entries: HashMap<Key, Value, ahash::RandomState>,
}

impl Map {
    /// Entries sorted as bpftrace prints them: by value ascending, then by key.
    pub fn sorted(&self) -> Vec<(&Key, &Value)> {
        let mut v: Vec<_> = self.entries.iter().collect();
        v.sort_by(|a, b| {
            a.1.number()
                .total_cmp(b.1.number())
                .then_with(|| a.0.cmp(b.0))
        });
        v
    }
}

/// Bounds of one script's aggregations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLimits {
    pub max_maps: usize,
    pub max_entries: usize,
    /// Bytes of one key (a string part counts its length, a number 8).
    pub max_key_bytes: usize,
    /// Bytes of every key of every map together.
    pub max_keys_bytes: usize,
}

impl Default for MapLimits {
    fn default() -> Self {
        MapLimits {
            max_maps: 64,
            max_entries: 10_000,
            max_key_bytes: 1 << 10,
            max_keys_bytes: 16 << 20,
        }
    }
}

/// The bytes a key counts for under [`MapLimits`].
fn key_bytes(key: &Key) -> usize {
    key.iter()
        .map(|p| match p {
            KeyPart::Str(s) => s.len(),
            _ => 8,
        })
        .sum()
}

/// Every aggregation map of a script, by name.
#[derive(Debug, Default)]
pub struct Aggregations {
    pub maps: BTreeMap<String, Map>,
    pub limits: MapLimits,
    /// The bytes of every key held, against `limits.max_keys_bytes`.
    keys_bytes: usize,
}

impl Aggregations {
    pub fn new(limits: MapLimits) -> Self {
        Aggregations {
            maps: BTreeMap::new(),
            limits,
            keys_bytes: 0,
        }
    }

    /// The entry of `key` in map `name` (created as a `kind` map if new), after checking the
    /// kind, the histogram layout and the limits.
    fn entry(
        &mut self,
        name: &str,
        kind: Kind,
        buckets: Option<Buckets>,
        key: Key,
        new: impl FnOnce() -> Value,
    ) -> Result<&mut Value, MapError> {
        if !self.maps.contains_key(name) {
            if self.maps.len() >= self.limits.max_maps {
                return Err(MapError::TooManyMaps {
                    name: name.to_string(),
                    limit: self.limits.max_maps,
                });
            }
            self.maps.insert(
                name.to_string(),
                Map {
                    kind,
                    buckets,
                    entries: HashMap::default(),
                },
            );
        }
        let map = self.maps.get_mut(name).expect("inserted above");
        if map.kind != kind {
            return Err(MapError::OtherKind {
                name: name.to_string(),
                holds: map.kind.name(),
                asked: kind.name(),
            });
        }
        if map.buckets != buckets {
            if let (Some(Buckets::Linear { min, max, step }), Some(_)) = (map.buckets, buckets) {
                return Err(MapError::OtherLayout {
                    name: name.to_string(),
                    min,
                    max,
                    step,
                });
            }
        }
        let len = map.entries.len();
        let limits = self.limits;
        match map.entries.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                if len >= limits.max_entries {
                    return Err(MapError::TooManyEntries {
                        name: name.to_string(),
                        limit: limits.max_entries,
                    });
                }
                let bytes = key_bytes(e.key());
                if bytes > limits.max_key_bytes {
                    return Err(MapError::KeyTooLong {
                        name: name.to_string(),
                        bytes,
                        limit: limits.max_key_bytes,
                    });
                }
                if self.keys_bytes + bytes > limits.max_keys_bytes {
                    return Err(MapError::KeysTooLong {
                        limit: limits.max_keys_bytes,
                    });
                }
                self.keys_bytes += bytes;
                Ok(e.insert(new()))
            }
        }
    }

    /// `count(map, key)`: returns the new count.
    pub fn count(&mut self, name: &str, key: Key) -> Result<u64, MapError> {
        match self.entry(name, Kind::Count, None, key, || Value::Count(0))? {
            Value::Count(n) => {
                *n += 1;
                Ok(*n)
            }
            _ => unreachable!("kind checked"),
        }
    }

    /// `sum(map, key, v)`: returns the new sum.
    pub fn sum(&mut self, name: &str, key: Key, v: Num) -> Result<Num, MapError> {
        match self.entry(name, Kind::Sum, None, key, || Value::Sum(Num::Int(0)))? {
            Value::Sum(s) => {
                *s = s.add(v);
                Ok(*s)
            }
            _ => unreachable!("kind checked"),
        }
    }

    pub fn avg(&mut self, name: &str, key: Key, v: Num) -> Result<(), MapError> {
        let new = || Value::Avg {
            sum: Num::Int(0),
            count: 0,
        };
        match self.entry(name, Kind::Avg, None, key, new)? {
            Value::Avg { sum, count } => {
                *sum = sum.add(v);
                *count += 1;
                Ok(())
            }
            _ => unreachable!("kind checked"),
        }
    }

    pub fn min(&mut self, name: &str, key: Key, v: Num) -> Result<(), MapError> {
        match self.entry(name, Kind::Min, None, key, || Value::Min(v))? {
            Value::Min(m) => {
                if v.total_cmp(*m) == Ordering::Less {
                    *m = v;
                }
                Ok(())
            }
            _ => unreachable!("kind checked"),
        }
    }

    pub fn max(&mut self, name: &str, key: Key, v: Num) -> Result<(), MapError> {
        match self.entry(name, Kind::Max, None, key, || Value::Max(v))? {
            Value::Max(m) => {
                if v.total_cmp(*m) == Ordering::Greater {
                    *m = v;
                }
                Ok(())
            }
            _ => unreachable!("kind checked"),
        }
    }

    /// `hist(map, key, v)` (`Buckets::Log2`) and `lhist(map, key, v, min, max, step)`.
    pub fn hist(&mut self, name: &str, key: Key, v: i64, buckets: Buckets) -> Result<(), MapError> {
        let kind = match buckets {
            Buckets::Log2 => Kind::Hist,
            Buckets::Linear { .. } => Kind::Lhist,
        };
        let new = || Value::Hist(Histogram::new(buckets));
        match self.entry(name, kind, Some(buckets), key, new)? {
            Value::Hist(h) => {
                h.add(v);
                Ok(())
            }
            _ => unreachable!("kind checked"),
        }
    }

    /// `lookup(map, key)`: the entry's number, `None` when there is none.
    pub fn get(&self, name: &str, key: &Key) -> Option<Num> {
        Some(self.maps.get(name)?.entries.get(key)?.number())
    }

    /// `clear(map)`: empties the map (it keeps its kind).
    pub fn clear(&mut self, name: &str) {
        if let Some(m) = self.maps.get_mut(name) {
            let freed: usize = m.entries.keys().map(key_bytes).sum();
            self.keys_bytes -= freed;
            m.entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        vec![KeyPart::Str(s.into())]
    }

    /// Bounds as far apart as an i64 allows: two buckets between them, each value in its
    /// own, no overflow on the way (`sonde trace` panicked on these).
    #[test]
    fn lhist_with_extreme_bounds() {
        let b = Buckets::linear(i64::MIN + 1, i64::MAX, i64::MAX).expect("2 buckets");
        let mut h = Histogram::new(b);
        for v in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            h.add(v);
        }
        assert_eq!(&*h.counts, &[1, 2, 3, 1]);
        assert_eq!(b.range(1), (Some(i64::MIN + 1), Some(0)));
        assert_eq!(b.range(2), (Some(0), Some(i64::MAX)));
        assert_eq!(b.range(3), (Some(i64::MAX), None));
    }

    #[test]
    fn log2_buckets_like_bpftrace() {
        let b = Buckets::Log2;
        assert_eq!(b.index(-5), 0);
        assert_eq!(b.index(0), 1);
        assert_eq!(b.index(1), 2);
        assert_eq!(b.index(2), 3);
        assert_eq!(b.index(3), 3);
        assert_eq!(b.index(4), 4);
        assert_eq!(b.index(7), 4);
        assert_eq!(b.index(8), 5);
        assert_eq!(b.index(1023), 11);
        assert_eq!(b.index(1024), 12);
        assert_eq!(b.index(i64::MAX), 64);
        assert_eq!(b.range(0), (None, Some(0)));
        assert_eq!(b.range(1), (Some(0), Some(1)));
        assert_eq!(b.range(2), (Some(1), Some(2)));
        assert_eq!(b.range(4), (Some(4), Some(8)));
        assert_eq!(b.range(12), (Some(1024), Some(2048)));
        assert_eq!(b.range(64), (Some(1 << 62), None));
    }

    #[test]
    fn linear_buckets_like_bpftrace() {
        let b = Buckets::linear(0, 100, 10).unwrap();
        assert_eq!(b.len(), 12);
        assert_eq!(b.index(-1), 0);
        assert_eq!(b.index(0), 1);
        assert_eq!(b.index(9), 1);
        assert_eq!(b.index(10), 2);
        assert_eq!(b.index(99), 10);
        assert_eq!(b.index(100), 11);
        assert_eq!(b.range(0), (None, Some(0)));
        assert_eq!(b.range(1), (Some(0), Some(10)));
        assert_eq!(b.range(10), (Some(90), Some(100)));
        assert_eq!(b.range(11), (Some(100), None));
        assert!(Buckets::linear(0, 100, 0).is_err());
        assert!(Buckets::linear(0, 100, 30).is_err());
        assert!(Buckets::linear(10, 10, 1).is_err());
        assert!(Buckets::linear(0, 1_000_000, 1).is_err());
    }

    /// Keys are bounded in size, one by one and all together; clearing a map gives its
    /// keys' bytes back.
    #[test]
    fn map_keys_are_bounded_in_bytes() {
        let mut a = Aggregations::new(MapLimits {
            max_key_bytes: 100,
            max_keys_bytes: 250,
            ..MapLimits::default()
        });
        let long = "x".repeat(101);
        let e = a.count("x", k(&long)).unwrap_err().to_string();
        assert_eq!(e, "a key of map @x is 101 bytes, over the limit of 100");
        assert!(a.maps["x"].entries.is_empty());
        // 92 + 8: exactly the limit of one key.
        let key = |i: i64| vec![KeyPart::Str("y".repeat(92).into()), KeyPart::Int(i)];
        assert_eq!(a.count("x", key(1)), Ok(1));
        assert_eq!(a.count("y", key(2)), Ok(1));
        let e = a.count("x", key(3)).unwrap_err().to_string();
        assert_eq!(
            e,
            "the script's map keys have reached the limit of 250 bytes"
        );
        // An existing key still counts.
        assert_eq!(a.count("x", key(1)), Ok(2));
        a.clear("x");
        assert_eq!(a.count("x", key(3)), Ok(1));
    }

    #[test]
    fn maps_keep_one_kind_and_their_limits() {
        let mut a = Aggregations::new(MapLimits {
            max_maps: 2,
            max_entries: 2,
            ..MapLimits::default()
        });
        assert_eq!(a.count("x", k("a")), Ok(1));
        assert_eq!(a.count("x", k("a")), Ok(2));
        assert_eq!(a.count("x", k("b")), Ok(1));
        let e = a.count("x", k("c")).unwrap_err().to_string();
        assert!(e.contains("limit of 2 entries"), "{e}");
        let e = a.sum("x", k("a"), Num::Int(1)).unwrap_err().to_string();
        assert_eq!(e, "map @x holds count values; it cannot also take sum()");
        a.sum("y", vec![], Num::Int(3)).unwrap();
        let e = a.max("z", vec![], Num::Int(3)).unwrap_err().to_string();
        assert!(e.contains("limit of 2 maps"), "{e}");
        let l1 = Buckets::linear(0, 10, 1).unwrap();
        let l2 = Buckets::linear(0, 20, 1).unwrap();
        a.clear("y");
        assert!(a.maps["y"].entries.is_empty());
        let mut b = Aggregations::default();
        b.hist("h", vec![], 1, l1).unwrap();
        let e = b.hist("h", vec![], 1, l2).unwrap_err().to_string();
        assert!(e.contains("min 0, max 10, step 1"), "{e}");
    }

    #[test]
    fn sums_averages_extremes() {
        let mut a = Aggregations::default();
        for v in [3, 1, 4, 1, 5] {
            a.sum("s", vec![], Num::Int(v)).unwrap();
            a.avg("a", vec![], Num::Int(v)).unwrap();
            a.min("lo", vec![], Num::Int(v)).unwrap();
            a.max("hi", vec![], Num::Int(v)).unwrap();
        }
        assert_eq!(a.get("s", &vec![]), Some(Num::Int(14)));
        assert_eq!(a.get("a", &vec![]), Some(Num::Float(2.8)));
        assert_eq!(a.get("lo", &vec![]), Some(Num::Int(1)));
        assert_eq!(a.get("hi", &vec![]), Some(Num::Int(5)));
        a.sum("s", vec![], Num::Float(0.5)).unwrap();
        assert_eq!(a.get("s", &vec![]), Some(Num::Float(14.5)));
        a.avg("even", vec![], Num::Int(2)).unwrap();
        a.avg("even", vec![], Num::Int(4)).unwrap();
        assert_eq!(a.get("even", &vec![]), Some(Num::Int(3)));
    }
}
