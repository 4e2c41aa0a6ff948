//! The rules: which labels a workload gets, by glob patterns on its pod and namespace names.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use sonde_plugin::Workload;

/// `spec.config` of the manifest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Tried in order; the first that matches gives the labels.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Glob on the pod name (`*` matches any run of characters).
    pub pod: String,
    /// Glob on the namespace; any namespace when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels to add: strings, or numbers and booleans (written as text).
    pub labels: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pod: String,
    pub namespace: Option<String>,
    pub labels: Vec<(String, String)>,
}

/// Builds the rules from the config, or says which field is wrong.
pub fn rules(settings: Settings) -> Result<Vec<Rule>, String> {
    settings
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let labels = r
                .labels
                .into_iter()
                .map(|(key, value)| {
                    let field = format!("config.rules[{i}].labels.{key}");
                    if key.is_empty() {
                        return Err(format!("config.rules[{i}].labels: a label name is empty"));
                    }
                    let text = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return Err(format!("{field}: must be a string, number or boolean")),
                    };
                    Ok((key, text))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(Rule {
                pod: r.pod,
                namespace: r.namespace,
                labels,
            })
        })
        .collect()
}

impl Rule {
    pub fn matches(&self, w: &Workload) -> bool {
        glob(&self.pod, &w.pod)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| glob(ns, &w.namespace))
    }
}

/// The labels of the first rule matching `w`; none when no rule does.
pub fn labels_for(rules: &[Rule], w: &Workload) -> Vec<(String, String)> {
    rules
        .iter()
        .find(|r| r.matches(w))
        .map(|r| r.labels.clone())
        .unwrap_or_default()
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none) and
/// everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently made to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_anywhere() {
        let yes = [
            ("web-*", "web-7f9c-abcde"),
            ("web-*", "web-"),
            ("*", ""),
            ("*", "anything"),
            ("*-db-*", "shop-db-0"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abc"),
            ("exact", "exact"),
            ("*end", "the-end"),
            ("**", "x"),
            ("a*a*a", "aaaa"),
        ];
        for (p, t) in yes {
            assert!(glob(p, t), "{p} should match {t}");
        }
        let no = [
            ("web-*", "api-1"),
            ("web-*", "web"),
            ("exact", "exactly"),
            ("exact", "inexact"),
            ("*-db-*", "shop-db"),
            ("a*b*c", "acb"),
            ("", "x"),
        ];
        for (p, t) in no {
            assert!(!glob(p, t), "{p} should not match {t}");
        }
    }

    fn parse(json: &str) -> Result<Vec<Rule>, String> {
        let settings: Settings = serde_json::from_str(json).map_err(|e| format!("config: {e}"))?;
        rules(settings)
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = parse(
            r#"{"rules": [
                {"pod": "web-*", "namespace": "shop", "labels": {"app": "web", "tier": "frontend"}},
                {"pod": "web-*", "labels": {"app": "web"}},
                {"pod": "*", "namespace": "kube-*", "labels": {"system": true, "prio": 2}}
            ]}"#,
        )
        .unwrap();
        let labels = |ns: &str, pod: &str| labels_for(&rules, &Workload::new(ns, pod));
        let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            labels("shop", "web-1"),
            kv(&[("app", "web"), ("tier", "frontend")])
        );
        assert_eq!(labels("other", "web-1"), kv(&[("app", "web")]));
        assert_eq!(
            labels("kube-system", "coredns-x"),
            kv(&[("prio", "2"), ("system", "true")])
        );
        assert_eq!(labels("shop", "db-0"), vec![]);
    }

    #[test]
    fn bad_rules_name_the_field() {
        assert!(parse("{}").unwrap().is_empty());
        let cases = [
            (
                r#"{"rules": [{"labels": {"a": "b"}}]}"#,
                "missing field `pod`",
            ),
            (
                r#"{"rules": [{"pod": "x", "labels": {"a": "b"}, "ns": "y"}]}"#,
                "unknown field `ns`",
            ),
            (
                r#"{"rules": [{"pod": "x", "labels": {"a": ["b"]}}]}"#,
                "config.rules[0].labels.a",
            ),
            (
                r#"{"rules": [{"pod": "x", "labels": {"": "b"}}]}"#,
                "config.rules[0].labels",
            ),
            (r#"{"rule": []}"#, "unknown field `rule`"),
        ];
        for (json, want) in cases {
            let e = parse(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
