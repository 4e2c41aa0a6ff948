//! The CLI's contract on bad input: a config with an unknown key or an unknown flag is refused
//! with one line naming the problem; `sonde probes` lists the catalogue.

use std::time::Duration;

use sonde_tests::{run_sonde, TempDir};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The misspelt key is on line 7.
const MISSPELT_CONFIG: &str = "# Sonde config for the integration tests.
# The packet_drop key below is misspelt on purpose.
node: config-test
probes:
  tcp_reset:
    enabled: true
  packet_drop: {enabld: true}
";

#[test]
fn unknown_config_key_is_refused() {
    let dir = TempDir::new();
    let config = dir.write("sonde.yaml", MISSPELT_CONFIG);
    let config = config.to_str().unwrap();
    let out = run_sonde(
        &["run", "--config", config, "--listen", "127.0.0.1:0"],
        EXIT_TIMEOUT,
    );
    assert!(
        !out.status.success(),
        "`sonde run` accepted an unknown key ({}); stderr: {}",
        out.status,
        out.stderr
    );
    let line = single_line(&out.stderr);
    assert!(
        line.contains("enabld"),
        "the error does not name the key `enabld`: {line}"
    );
    assert!(
        names_line(line, 7),
        "the error does not name line 7: {line}"
    );
}

/// An `attach` that is not auto, tcx or clsact is refused on one line naming the probe, the
/// setting and the line.
#[test]
fn bad_attach_mode_is_refused() {
    let dir = TempDir::new();
    let config = dir.write("sonde.yaml", "probes:\n  dns:\n    attach: tc\n");
    let config = config.to_str().unwrap();
    let out = run_sonde(
        &["run", "--config", config, "--listen", "127.0.0.1:0"],
        EXIT_TIMEOUT,
    );
    assert!(!out.status.success(), "accepted attach: tc; {}", out.stderr);
    let line = single_line(&out.stderr);
    assert!(
        line.contains("probes.dns")
            && line.contains("attach")
            && line.contains("auto, tcx or clsact"),
        "{line}"
    );
    assert!(
        names_line(line, 3),
        "the error does not name line 3: {line}"
    );
}

#[test]
fn unknown_flag_is_refused() {
    let out = run_sonde(&["run", "--bogus"], EXIT_TIMEOUT);
    assert!(
        !out.status.success(),
        "`sonde run --bogus` succeeded ({}); stderr: {}",
        out.status,
        out.stderr
    );
    let line = single_line(&out.stderr);
    assert!(
        line.contains("--bogus"),
        "the error does not name the flag: {line}"
    );
}

#[test]
fn probes_lists_the_catalogue() {
    let out = run_sonde(&["probes"], EXIT_TIMEOUT);
    assert!(
        out.status.success(),
        "`sonde probes` failed ({}); stderr: {}",
        out.status,
        out.stderr
    );
    for probe in ["packet_drop", "tcp_retrans", "tcp_reset"] {
        assert!(
            out.stdout.lines().any(|l| l
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == probe)),
            "`sonde probes` does not list {probe}:\n{}",
            out.stdout
        );
    }
}

/// The only line of `stderr`; panics if there are none or several.
fn single_line(stderr: &str) -> &str {
    let text = stderr.trim_end_matches('\n');
    assert!(
        !text.is_empty() && !text.contains('\n'),
        "stderr is not exactly one line:\n{stderr}"
    );
    text
}

/// True if `text` gives `line` as a line number: "line 7", "line: 7" or "file:7:...".
fn names_line(text: &str, line: usize) -> bool {
    let wanted = line.to_string();
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if !bytes[start].is_ascii_digit() {
            start += 1;
            continue;
        }
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        let before = text[..start].to_ascii_lowercase();
        if text[start..end] == wanted
            && (before.ends_with("line ") || before.ends_with("line: ") || before.ends_with(':'))
        {
            return true;
        }
        start = end;
    }
    false
}
