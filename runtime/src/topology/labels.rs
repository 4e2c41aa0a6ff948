//! `topology.additionalLabels`: labels made from each pod's Kubernetes labels, added after
//! `node`, `namespace`, `pod` to every workload-labelled metric and to events' `labels`.
//! An entry is `NAME=TEMPLATE`, the template text with `${labels:KEY}` for the value of the
//! pod's label KEY (empty when the pod has none): `app=${labels:app}`,
//! `tier=${labels:app.kubernetes.io/component}`.
//!
//! Each label takes at most `maxLabelValues` distinct values over the agent's life; pods whose
//! value would be one more get `_other`, so a label copied from something unique per pod (a
//! hash, a version) cannot multiply the series without bound.

use crate::config::Invalid;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// The value of a label past its cap.
pub const OTHER: &str = "_other";

/// Labels the agent's own series already use: an additional label may not take their names.
const TAKEN: &[&str] = &[
    "node",
    "namespace",
    "pod",
    "reason",
    "direction",
    "side",
    "cause",
    "interface",
    "vec",
    "device",
    "op",
    "probe",
    "plugin",
    "kind",
    "counter",
    "le",
    "quantile",
];

#[derive(Debug)]
enum Part {
    Text(String),
    Label(String),
}

/// The additional labels and the values each has taken so far.
#[derive(Debug, Default)]
pub struct AdditionalLabels {
    names: Vec<String>,
    templates: Vec<Vec<Part>>,
    cap: usize,
    seen: Mutex<Vec<HashSet<String>>>,
}

impl AdditionalLabels {
    /// Parses `topology.additionalLabels` with the cap `topology.maxLabelValues`; errors name
    /// the entry.
    pub fn parse(entries: &[String], cap: usize) -> Result<Self, Invalid> {
        let mut names = Vec::new();
        let mut templates = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("topology.additionalLabels[{i}]");
            let invalid = |reason: String| Invalid::new(&field, format!("{entry:?}{reason}"));
            let (name, template) = entry
                .split_once('=')
                .ok_or_else(|| invalid(" is not NAME=TEMPLATE (e.g. app=${labels:app})".into()))?;
            let valid = name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            if name.is_empty() || !valid || name.starts_with("__") {
                return Err(invalid(format!(
                    ": {name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                )));
            }
            if TAKEN.contains(&name) || names.iter().any(|n| n == name) {
                return Err(invalid(format!(": the label {name:?} is already taken")));
            }
            templates.push(parse_template(template).map_err(|e| invalid(format!(": {e}")))?);
            names.push(name.to_string());
        }
        Ok(AdditionalLabels {
            seen: Mutex::new(vec![HashSet::new(); names.len()]),
            names,
            templates,
            cap,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The values of the additional labels for a pod with these Kubernetes labels, each
    /// `_other` once its label has taken `cap` other values.
    pub fn values(&self, pod_labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        self.templates
            .iter()
            .zip(seen.iter_mut())
            .map(|(parts, seen)| {
                let value: String = parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => t.as_str(),
                        Part::Label(k) => pod_labels.get(k).map_or("", String::as_str),
                    })
                    .collect();
                if value.is_empty() || seen.contains(&value) {
                    value
                } else if seen.len() < self.cap {
                    seen.insert(value.clone());
                    value
                } else {
                    OTHER.to_string()
                }
            })
            .collect()
    }
}

/// What is wrong with a label's template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TemplateError {
    #[error("unclosed ${{ in {0:?}")]
    Unclosed(String),
    #[error("${{{0}}}: only ${{labels:KEY}} is known")]
    Unknown(String),
}

fn parse_template(t: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(at) = rest.find("${") {
        if at > 0 {
            parts.push(Part::Text(rest[..at].to_string()));
        }
        let end = rest[at..]
            .find('}')
            .ok_or_else(|| TemplateError::Unclosed(t.to_string()))?;
        let inner = &rest[at + 2..at + end];
        let key = inner
            .strip_prefix("labels:")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| TemplateError::Unknown(inner.to_string()))?;
        parts.push(Part::Label(key.to_string()));
        rest = &rest[at + end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_take_pod_labels_and_values_are_capped() {
        let l = AdditionalLabels::parse(
            &[
                "app=${labels:app}".into(),
                "where=${labels:team}-${labels:tier}".into(),
            ],
            2,
        )
        .unwrap();
        assert_eq!(l.names(), ["app", "where"]);
        assert_eq!(
            l.values(&labels(&[
                ("app", "web"),
                ("team", "shop"),
                ("tier", "front")
            ])),
            ["web", "shop-front"]
        );
        assert_eq!(l.values(&labels(&[])), ["", "-"]);
        assert_eq!(l.values(&labels(&[("app", "db")])), ["db", "-"]);
        // A third value of app is one too many; the ones it has keep their names.
        assert_eq!(l.values(&labels(&[("app", "cache")])), [OTHER, "-"]);
        assert_eq!(l.values(&labels(&[("app", "web")])), ["web", "-"]);
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry() {
        for (entry, says) in [
            ("app", "NAME=TEMPLATE"),
            ("9app=${labels:app}", "label name"),
            ("pod=${labels:app}", "already taken"),
            ("app=${labels:app", "unclosed"),
            ("app=${env:HOME}", "only ${labels:KEY}"),
        ] {
            let e = AdditionalLabels::parse(&[entry.to_string()], 10).unwrap_err();
            assert_eq!(e.field, "topology.additionalLabels[0]");
            assert!(e.reason.contains(says), "{entry}: {e}");
        }
    }
}
