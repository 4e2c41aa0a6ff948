//! The monitoring in deploy/: the chart's alert rules pass promtool (and their unit tests),
//! the plain rule file holds the same groups, and the Grafana dashboards are importable and
//! query only their own variables. That every metric they query is one the agent exports is
//! deploy_daemonset.rs's test.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::json;
use sonde_tests::chart::{prometheus_rule, read, root, RuleFile};
use sonde_tests::dashboards::{dashboards, metric_names, panels};
use sonde_tests::TempDir;

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (apt-get install prometheus): {e}"));
    assert!(
        out.status.success(),
        "promtool {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let rule = prometheus_rule();
    let dir = TempDir::new();
    let file = dir.write(
        "rules.yaml",
        &serde_yaml_ng::to_string(&rule.spec).expect("serializes"),
    );
    promtool(&["check", "rules", &file.display().to_string()]);

    // The plain rule file holds the same groups.
    let plain = root().join("deploy/prometheus/sonde-alerts.yaml");
    promtool(&["check", "rules", &plain.display().to_string()]);
    let groups: RuleFile = serde_yaml_ng::from_str(&read(&plain)).expect("a rule file");
    assert_eq!(groups, rule.spec);
    let alerts: Vec<&str> = rule
        .spec
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter_map(|r| r.alert.as_deref())
        .collect();
    for alert in [
        "SondePodPacketDrops",
        "SondeTCPRetransmitStorm",
        "SondePluginQuarantined",
        "SondeEventsLost",
        "SondeSeriesCapReached",
    ] {
        assert!(alerts.contains(&alert), "{alert} missing from {alerts:?}");
    }

    // The alerts fire on the series they are about (promtool's rule unit tests).
    let tests = root().join("deploy/prometheus/sonde-alerts.test.yaml");
    promtool(&["test", "rules", &tests.display().to_string()]);
}

#[test]
fn dashboards_are_importable() {
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let boards = dashboards();
    let names: Vec<&str> = boards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "sonde-flows.json",
            "sonde-node.json",
            "sonde-plugins.json",
            "sonde-pod.json"
        ]
    );
    let mut uids = BTreeSet::new();
    for (name, d) in &boards {
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Sonde / ")),
            "{name}: title"
        );
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some(),
            "{name}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        let var_names: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
        let source = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .expect("datasource variable");
        assert_eq!(source["type"], "datasource", "{name}");
        assert_eq!(source["query"], "prometheus", "{name}");
        let wanted: &[&str] = if *name == "sonde-plugins.json" {
            &["node", "plugin"]
        } else if *name == "sonde-node.json" {
            &["node"]
        } else {
            &["node", "namespace", "pod"]
        };
        for w in wanted {
            assert!(var_names.contains(w), "{name}: no variable {w}");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"], ds, "{name}: variable {}", v["name"]);
        }
        let mut ids = BTreeSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: panel id of {title}"
            );
            assert!(
                p["gridPos"]["w"].as_u64().is_some(),
                "{name}: {title}: gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"], ds, "{name}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for t in targets {
                assert_eq!(t["datasource"], ds, "{name}: {title}");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{name}: {title}: empty query");
                // Every Grafana variable a query uses exists (or is built in).
                for var in grafana_variables(expr) {
                    assert!(
                        var.starts_with("__") || var_names.contains(var.as_str()),
                        "{name}: {title}: ${var} is not a variable of the dashboard"
                    );
                }
            }
        }
    }
}

fn grafana_variables(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push(name);
    }
    out
}

#[test]
fn promql_metric_names() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, side) (rate(sonde_x_bucket{node=~"$node", a="b}"}[$__rate_interval]))) / on (pod) group_left sum(y) > 0.5 and z offset 5m"#
        ),
        ["sonde_x_bucket", "y", "z"]
    );
    assert_eq!(
        metric_names(r#"label_values(sonde_a{node=~"$node"}, namespace)"#),
        ["sonde_a"]
    );
    assert_eq!(metric_names("sum(rate(a[5m])) by (pod) > 1e3"), ["a"]);
}
