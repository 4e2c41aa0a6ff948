//! How aggregation maps are shown: bpftrace's text (`@name[key, key]: value`, histograms as
//! ASCII bars) and one JSON document.
//!
//! JSON: `{"maps": {"<name>": [{"key": [...], "value": V}]}}`, entries in the text's order
//! (value ascending). `key` is always an array (empty for a keyless map). `V` is a number,
//! or for `hist` and `lhist` a histogram object:
//! `{"buckets": [{"min": 4, "max": 8, "count": 12}, ...], "count": 40, "sum": 230}`, with the
//! buckets from the first to the last non-empty one, each `[min, max)`; `min` is `null` for
//! the bucket below the lowest bound and `max` is `null` for the bucket above the highest.

use std::fmt::Write as _;

use serde_json::{json, Value as Json};

use super::aggregate::{Aggregations, Buckets, Histogram, Key, KeyPart, Map, Num, Value};

/// Width of the widest bar, as in bpftrace.
const BAR_WIDTH: usize = 52;

fn key_part_text(p: &KeyPart) -> String {
    match p {
        KeyPart::Unit => "()".into(),
        KeyPart::Bool(b) => b.to_string(),
        KeyPart::Int(i) => i.to_string(),
        KeyPart::Float(f) => f64::from_bits(*f).to_string(),
        KeyPart::Str(s) => s.to_string(),
    }
}

fn key_part_json(p: &KeyPart) -> Json {
    match p {
        KeyPart::Unit => Json::Null,
        KeyPart::Bool(b) => json!(b),
        KeyPart::Int(i) => json!(i),
        KeyPart::Float(f) => json!(f64::from_bits(*f)),
        KeyPart::Str(s) => json!(s.as_str()),
    }
}

fn num_json(n: Num) -> Json {
    match n {
        Num::Int(i) => json!(i),
        Num::Float(f) => json!(f),
    }
}

/// `@name[a, b]` (`@name` for an empty key).
fn label(name: &str, key: &Key) -> String {
    if key.is_empty() {
        format!("@{name}")
    } else {
        let parts: Vec<String> = key.iter().map(key_part_text).collect();
        format!("@{name}[{}]", parts.join(", "))
    }
}

/// A power-of-two bound as bpftrace writes it: `1K`, `4M`, ...
fn log2_bound(n: i64) -> String {
    const SUFFIXES: [(i64, &str); 5] = [
        (1 << 50, "P"),
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    if n == 0 {
        return "0".into();
    }
    for (unit, suffix) in SUFFIXES {
        if n % unit == 0 {
            return format!("{}{suffix}", n / unit);
        }
    }
    n.to_string()
}

fn bucket_header(buckets: Buckets, index: usize) -> String {
    let (low, high) = buckets.range(index);
    match buckets {
        Buckets::Log2 => match (index, low, high) {
            (0, ..) => "(..., 0)".into(),
            (1, ..) => "[0]".into(),
            (2, ..) => "[1]".into(),
            (_, Some(l), Some(h)) => format!("[{}, {})", log2_bound(l), log2_bound(h)),
            (_, Some(l), None) => format!("[{}, ...)", log2_bound(l)),
            _ => String::new(),
        },
        Buckets::Linear { .. } => match (low, high) {
            (None, Some(h)) => format!("(..., {h})"),
            (Some(l), None) => format!("[{l}, ...)"),
            (Some(l), Some(h)) => format!("[{l}, {h})"),
            (None, None) => String::new(),
        },
    }
}

/// A histogram's bars, one line per bucket, in bpftrace's layout.
pub fn histogram_text(h: &Histogram) -> String {
    let mut out = String::new();
    let top = h.counts.iter().copied().max().unwrap_or(0).max(1);
    for (index, count) in h.shown() {
        let bar = "@".repeat((count as f64 / top as f64 * BAR_WIDTH as f64) as usize);
        let _ = writeln!(
            out,
            "{:<16}{:>8} |{:<width$}|",
            bucket_header(h.buckets, index),
            count,
            bar,
            width = BAR_WIDTH
        );
    }
    out
}

/// One map as text; nothing for an empty map. Ends with a blank line, as bpftrace does.
pub fn map_text(name: &str, map: &Map) -> String {
    if map.entries.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for (key, value) in map.sorted() {
        match value {
            Value::Hist(h) => {
                let _ = writeln!(out, "{}:", label(name, key));
                out += &histogram_text(h);
                out.push('\n');
            }
            v => {
                let _ = writeln!(out, "{}: {}", label(name, key), v.number());
            }
        }
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out
}

/// Every map as text, by name.
pub fn text(aggs: &Aggregations) -> String {
    aggs.maps
        .iter()
        .map(|(name, map)| map_text(name, map))
        .collect()
}

fn histogram_json(h: &Histogram) -> Json {
    let buckets: Vec<Json> = h
        .shown()
        .map(|(index, count)| {
            let (min, max) = h.buckets.range(index);
            json!({"min": min, "max": max, "count": count})
        })
        .collect();
    json!({"buckets": buckets, "count": h.count, "sum": num_json(h.sum)})
}

/// One map as a JSON array of `{"key": [...], "value": ...}`.
pub fn map_json(map: &Map) -> Json {
    let entries: Vec<Json> = map
        .sorted()
        .into_iter()
        .map(|(key, value)| {
            let key: Vec<Json> = key.iter().map(key_part_json).collect();
            let value = match value {
                Value::Hist(h) => histogram_json(h),
                v => num_json(v.number()),
            };
            json!({"key": key, "value": value})
        })
        .collect();
    Json::Array(entries)
}

/// The document `--output json` prints: `{"maps": {...}}`.
pub fn json(aggs: &Aggregations) -> Json {
    let maps: serde_json::Map<String, Json> = aggs
        .maps
        .iter()
        .map(|(name, map)| (name.clone(), map_json(map)))
        .collect();
    json!({ "maps": maps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sorted_by_value_ascending() {
        let mut a = Aggregations::default();
        let key =
            |pod: &str, reason: &str| vec![KeyPart::Str(pod.into()), KeyPart::Str(reason.into())];
        for _ in 0..3 {
            a.count("drops", key("b", "NETFILTER_DROP")).unwrap();
        }
        a.count("drops", key("a", "NO_SOCKET")).unwrap();
        a.count("total", vec![]).unwrap();
        assert_eq!(
            text(&a),
            "@drops[a, NO_SOCKET]: 1\n@drops[b, NETFILTER_DROP]: 3\n\n@total: 1\n\n"
        );
        assert_eq!(
            json(&a),
            json!({"maps": {
                "drops": [
                    {"key": ["a", "NO_SOCKET"], "value": 1},
                    {"key": ["b", "NETFILTER_DROP"], "value": 3},
                ],
                "total": [{"key": [], "value": 1}],
            }})
        );
    }

    #[test]
    fn hist_drawn_like_bpftrace() {
        let mut a = Aggregations::default();
        for v in [0, 1, 2, 3, 4, 5, 6, 7, 1024, 1500] {
            a.hist("h", vec![], v, Buckets::Log2).unwrap();
        }
        let bar = |n: usize| format!("|{:<52}|", "@".repeat(n));
        let expected = [
            format!("{:<16}{:>8} {}", "[0]", 1, bar(13)),
            format!("{:<16}{:>8} {}", "[1]", 1, bar(13)),
            format!("{:<16}{:>8} {}", "[2, 4)", 2, bar(26)),
            format!("{:<16}{:>8} {}", "[4, 8)", 4, bar(52)),
        ];
        let got = text(&a);
        let mut lines = got.lines();
        assert_eq!(lines.next(), Some("@h:"));
        for line in &expected {
            assert_eq!(lines.next(), Some(line.as_str()));
        }
        // Empty buckets between the first and the last non-empty one are shown.
        for _ in 0..7 {
            assert!(lines.next().unwrap().contains(" 0 |"));
        }
        assert_eq!(
            lines.next(),
            Some(format!("{:<16}{:>8} {}", "[1K, 2K)", 2, bar(26)).as_str())
        );
        let j = json(&a);
        let buckets = &j["maps"]["h"][0]["value"]["buckets"];
        assert_eq!(buckets[0], json!({"min": 0, "max": 1, "count": 1}));
        assert_eq!(buckets[3], json!({"min": 4, "max": 8, "count": 4}));
        assert_eq!(buckets[11], json!({"min": 1024, "max": 2048, "count": 2}));
        assert_eq!(j["maps"]["h"][0]["value"]["count"], json!(10));
        assert_eq!(j["maps"]["h"][0]["value"]["sum"], json!(2552));
    }

    #[test]
    fn lhist_drawn_like_bpftrace() {
        let mut a = Aggregations::default();
        let b = Buckets::linear(0, 30, 10).unwrap();
        for v in [-1, 5, 15, 15, 30, 99] {
            a.hist("l", vec![KeyPart::Int(7)], v, b).unwrap();
        }
        let got = text(&a);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], "@l[7]:");
        assert!(lines[1].starts_with("(..., 0)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@ "));
        assert!(lines[2].starts_with("[0, 10)                1 |"));
        assert!(lines[3].starts_with(
            "[10, 20)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|"
        ));
        assert!(lines[4].starts_with("[20, 30)               0 |"));
        assert!(lines[5].starts_with("[30, ...)              2 |"));
        let j = json(&a);
        assert_eq!(
            j["maps"]["l"][0]["value"]["buckets"],
            json!([
                {"min": null, "max": 0, "count": 1},
                {"min": 0, "max": 10, "count": 1},
                {"min": 10, "max": 20, "count": 2},
                {"min": 20, "max": 30, "count": 0},
                {"min": 30, "max": null, "count": 2},
            ])
        );
        assert_eq!(j["maps"]["l"][0]["key"], json!([7]));
    }
}
