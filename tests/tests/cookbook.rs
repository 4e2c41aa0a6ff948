//! docs/cookbook.md: every `sonde trace` one-liner in it runs against real traffic and prints
//! the lines the `<!-- expect ... -->` comment after it names.
//!
//! The traffic, the same for each one-liner: 300 UDP datagrams from pod A into a DROP rule in
//! pod B, 20 TCP connects from A to a closed port of B, and a bulk transfer from pod C to pod
//! D through 10 % random loss. Scripts name pod B `web-1`. In expected lines, `{A}` .. `{D}`
//! are the pods, `{A_IP}` .. `{D_IP}` their IPv4 addresses, `{N}` a number and `{*}` any text;
//! each expected line must equal a line of the output.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sonde_tests::{
    bulk_transfer, refused_connects, send_udp, IpFamily, PodPair, Trace, READY_TIMEOUT,
};

const DROP_PORT: u16 = 9999;
const CLOSED_PORT: u16 = 7777;
const LOSSY_PORT: u16 = 5201;
const DATAGRAMS: usize = 300;
const CONNECTS: usize = 20;
const BULK_BYTES: usize = 8 << 20;

struct OneLiner {
    title: String,
    command: String,
    expect: Vec<String>,
}

/// The one-liners of the cookbook: each `sonde trace` line in a ```sh block, with the
/// `<!-- expect` comment that follows it.
fn one_liners(text: &str) -> Vec<OneLiner> {
    let mut found = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix("### ") {
            title = t.to_string();
        }
        if line != "```sh" {
            continue;
        }
        let command = lines.next().unwrap_or_default().to_string();
        assert!(
            command.starts_with("sonde trace "),
            "{title}: a sh block that is not a sonde trace one-liner: {command}"
        );
        assert_eq!(lines.next(), Some("```"), "{title}: one command per block");
        assert_eq!(
            lines.next(),
            Some("<!-- expect"),
            "{title}: every one-liner needs an <!-- expect comment after it"
        );
        let expect: Vec<String> = lines
            .by_ref()
            .take_while(|l| *l != "-->")
            .map(String::from)
            .collect();
        assert!(!expect.is_empty(), "{title}: nothing expected");
        found.push(OneLiner {
            title: title.clone(),
            command,
            expect,
        });
    }
    found
}

/// Splits a shell command line into words: blanks separate words, single quotes group.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Whether `line` matches `pattern`, in which `{N}` is one or more digits and `{*}` any text.
fn matches(pattern: &str, line: &str) -> bool {
    if let Some(rest) = pattern.strip_prefix("{N}") {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        return (1..=digits).rev().any(|n| matches(rest, &line[n..]));
    }
    if let Some(rest) = pattern.strip_prefix("{*}") {
        return line
            .char_indices()
            .map(|(i, _)| i)
            .chain([line.len()])
            .any(|i| matches(rest, &line[i..]));
    }
    match (pattern.chars().next(), line.chars().next()) {
        (None, None) => true,
        (Some(p), Some(l)) if p == l => matches(&pattern[p.len_utf8()..], &line[l.len_utf8()..]),
        _ => false,
    }
}

#[test]
fn pattern_matching() {
    assert!(matches("@a[{N}]: {N}", "@a[12]: 300"));
    assert!(!matches("@a[{N}]: {N}", "@a[]: 300"));
    assert!(matches("x{*}y", "xy"));
    assert!(matches("x{*}y", "x  abc y"));
    assert!(!matches("x{*}y", "x  abc"));
    assert_eq!(
        shell_words("sonde trace --interval 1s -e 'fn a(e) { b(\"x y\"); }'"),
        [
            "sonde",
            "trace",
            "--interval",
            "1s",
            "-e",
            "fn a(e) { b(\"x y\"); }"
        ]
    );
}

#[test]
fn every_one_liner_runs_against_real_traffic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cookbook.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let one_liners = one_liners(&text);
    assert!(
        one_liners.len() >= 10,
        "the cookbook has {} one-liners, fewer than ten",
        one_liners.len()
    );

    let drops = PodPair::new();
    drops.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {DROP_PORT} -j DROP"),
    );
    let lossy = PodPair::new();
    lossy.b.iptables(
        IpFamily::V4,
        &format!(
            "-A INPUT -p tcp --dport {LOSSY_PORT} -m statistic --mode random --probability 0.1 -j DROP"
        ),
    );
    let substitute = |s: &str| {
        s.replace("{A}", drops.a.name())
            .replace("{B}", drops.b.name())
            .replace("{C}", lossy.a.name())
            .replace("{D}", lossy.b.name())
            .replace("{A_IP}", &drops.a_end.ipv4.to_string())
            .replace("{B_IP}", &drops.b_end.ipv4.to_string())
            .replace("{C_IP}", &lossy.a_end.ipv4.to_string())
            .replace("{D_IP}", &lossy.b_end.ipv4.to_string())
    };

    for one in &one_liners {
        let words: Vec<String> = shell_words(&one.command)
            .into_iter()
            .map(|w| w.replace("web-1", drops.b.name()))
            .collect();
        assert_eq!(&words[..2], ["sonde", "trace"], "{}", one.title);
        let args: Vec<&str> = words[2..].iter().map(String::as_str).collect();
        let mut trace = Trace::start(&args);
        trace.wait_attached(READY_TIMEOUT);

        let v4 = IpFamily::V4;
        send_udp(
            &drops.a,
            drops.a_end.ip(v4),
            SocketAddr::new(drops.b_end.ip(v4), DROP_PORT),
            DATAGRAMS,
        );
        refused_connects(
            &drops.a,
            SocketAddr::new(drops.b_end.ip(v4), CLOSED_PORT),
            CONNECTS,
        );
        bulk_transfer(
            &lossy.a,
            &lossy.b,
            lossy.b_end.ip(v4),
            LOSSY_PORT,
            BULK_BYTES,
        );
        // Past the collectors' 25 ms poll and one --interval, then Ctrl-C.
        std::thread::sleep(Duration::from_millis(1500));
        trace.interrupt();
        let done = trace.finish(Duration::from_secs(30));

        assert!(
            done.status.success(),
            "{}: `{}` failed: {}",
            one.title,
            one.command,
            done.stderr
        );
        assert!(!done.stdout.trim().is_empty(), "{}: no output", one.title);
        let lines: Vec<&str> = done.stdout.lines().collect();
        for pattern in &one.expect {
            let pattern = substitute(pattern);
            assert!(
                lines.iter().any(|l| matches(&pattern, l)),
                "{}: no line of the output matches {pattern:?}; the output:\n{}\nstderr:\n{}",
                one.title,
                done.stdout,
                done.stderr
            );
        }
    }
}
