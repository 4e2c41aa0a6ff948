//! The Grafana dashboards in deploy/grafana and the PromQL their panels, their variables and
//! the chart's alert rules query.

use serde_json::Value;

use crate::chart::{prometheus_rule, read, root};

/// The dashboards, by file name, sorted.
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("deploy/grafana");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let v = serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A dashboard's panels, and the panels inside its rows.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL query of the dashboards (panels and variables) and of the alert rules, with
/// where it is.
pub fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, d) in dashboards() {
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    format!(
                        "{name}: panel {:?}",
                        p["title"].as_str().unwrap_or_default()
                    ),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                out.push((
                    format!("{name}: variable {}", v["name"]),
                    v["query"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    for g in prometheus_rule().spec.groups {
        for r in g.rules {
            out.push((format!("alert {}", r.alert.unwrap_or_default()), r.expr));
        }
    }
    out
}

/// The metric names a PromQL expression reads: identifiers outside strings, label matchers,
/// ranges and grouping clauses that are neither functions nor keywords. `label_values(m, l)`
/// (a Grafana variable query) reads `m`.
pub fn metric_names(expr: &str) -> Vec<String> {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let metric = inner.rsplit_once(',').map_or(inner, |(m, _)| m);
        return metric_names(metric);
    }
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Followed by a parenthesised list of label names.
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            if chars[*i] == '"' {
                *i += 1;
                while *i < chars.len() && chars[*i] != '"' {
                    *i += if chars[*i] == '\\' { 2 } else { 1 };
                }
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            skip_to(&mut i, '}');
        } else if c == '[' {
            skip_to(&mut i, ']');
        } else if c == '$' {
            // A Grafana variable.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            // `sum by (...) (...)`: an aggregation whose grouping comes first.
            let next: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let aggregation = next == "by" || next == "without";
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = j;
                    skip_to(&mut i, ')');
                }
            } else if !call && !aggregation && !KEYWORDS.contains(&word.as_str()) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}
