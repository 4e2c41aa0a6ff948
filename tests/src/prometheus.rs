//! Reading values out of the Prometheus text exposition format.

/// The value of metric `name` in exposition `text`, over the series whose labels include every
/// pair in `labels` (other labels may have any value). If several series match, their values are
/// summed; `None` if none does. Lines that are not a sample of `name` are ignored.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(sample) = parse_sample(line) else {
            continue;
        };
        if sample.name == name
            && labels
                .iter()
                .all(|(k, v)| sample.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            *found.get_or_insert(0.0) += sample.value;
        }
    }
    found
}

/// Every series of metric `name` in exposition `text`: its labels (sorted) and its value.
pub fn metric_series(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut all: Vec<(Vec<(String, String)>, f64)> = text
        .lines()
        .filter_map(parse_sample)
        .filter(|s| s.name == name)
        .map(|mut s| {
            s.labels.sort();
            (s.labels, s.value)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// A series of an exposition: its name, its labels (sorted) and its value.
pub type SeriesSample = (String, Vec<(String, String)>, f64);

/// Every series in exposition `text` (a histogram's `_bucket`, `_sum` and `_count` apart).
pub fn all_series(text: &str) -> Vec<SeriesSample> {
    text.lines()
        .filter_map(parse_sample)
        .map(|mut s| {
            s.labels.sort();
            (s.name.to_string(), s.labels, s.value)
        })
        .collect()
}

/// One line of the exposition: a series and its value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Splits `name{k="v",...} value [timestamp]` into its parts; `None` for comments, blank or
/// malformed lines.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[close + 1..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Panics unless `promtool check metrics` accepts the exposition `body` without a remark.
#[track_caller]
pub fn assert_promtool_clean(body: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (apt-get install prometheus): {e}"));
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool finished");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sonde_packet_drops_total Packets the kernel dropped.
# TYPE sonde_packet_drops_total counter
sonde_packet_drops_total{node="n",namespace="",pod="B",reason="NETFILTER_DROP"} 500
sonde_packet_drops_total{node="n",namespace="",pod="B",reason="NO_SOCKET"} 20
sonde_packet_drops_total{node="n",namespace="",pod="A \"x\"",reason="NO_SOCKET"} 3
sonde_probe_up{probe="packet_drop"} 1
sonde_build_info 1
"#;

    #[test]
    fn matches_on_given_labels() {
        let drops = "sonde_packet_drops_total";
        assert_eq!(
            metric_value(TEXT, drops, &[("pod", "B"), ("reason", "NETFILTER_DROP")]),
            Some(500.0)
        );
        assert_eq!(metric_value(TEXT, drops, &[("pod", "B")]), Some(520.0));
        assert_eq!(metric_value(TEXT, drops, &[("pod", "A \"x\"")]), Some(3.0));
        assert_eq!(metric_value(TEXT, drops, &[("pod", "C")]), None);
        assert_eq!(
            metric_value(TEXT, "sonde_probe_up", &[("probe", "packet_drop")]),
            Some(1.0)
        );
        assert_eq!(metric_value(TEXT, "sonde_build_info", &[]), Some(1.0));
        assert_eq!(metric_value(TEXT, "sonde_build", &[]), None);
    }
}
