//! Whether kprobes can be attached to kernel functions on the running kernel, asked before a
//! probe with kprobe hooks loads so that `sonde probes` and the agent say why not.
//!
//! aya attaches a kprobe through the kernel's `kprobe` perf event source
//! (`/sys/bus/event_source/devices/kprobe`, there when the kernel has kprobes and kprobe
//! events), by the function's name, which the kernel resolves through kallsyms: a function that
//! was inlined everywhere (or renamed, `.constprop.0`) is not there and cannot be probed.
//! kallsyms rather than tracefs's `available_filter_functions`: kprobes do not need ftrace, and
//! `/proc` is there without tracefs mounted.

use std::io::BufRead;
use std::path::Path;

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";
const KALLSYMS: &str = "/proc/kallsyms";

/// Why a kprobe cannot be attached to a kernel function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KprobeError {
    #[error(
        "this kernel has no kprobes (no {KPROBE_PMU}: CONFIG_KPROBES or CONFIG_KPROBE_EVENTS is off)"
    )]
    NoKprobes,
    /// Reading `/proc/kallsyms` failed (the I/O error's text: the error is cloned for every
    /// hook that asks).
    #[error("cannot read {KALLSYMS}: {0}")]
    Kallsyms(String),
    #[error("{0} is not in {KALLSYMS} (inlined or renamed in this kernel)")]
    NotFound(&'static str),
    #[error("none of {} is in {KALLSYMS} (inlined or renamed in this kernel)", .0.join(", "))]
    NoneFound(Vec<&'static str>),
}

/// Which of `functions` a kprobe can be attached to on this kernel; `Err` says why none can.
pub fn attachable(functions: &[&'static str]) -> Result<Vec<&'static str>, KprobeError> {
    if !Path::new(KPROBE_PMU).exists() {
        return Err(KprobeError::NoKprobes);
    }
    let kallsyms = |e: std::io::Error| KprobeError::Kallsyms(e.to_string());
    let file = std::fs::File::open(KALLSYMS).map_err(kallsyms)?;
    text_symbols(std::io::BufReader::new(file), functions).map_err(kallsyms)
}

/// The functions of `functions` that are text symbols of `kallsyms` (`address type name
/// [module]` lines; type `t` or `T`).
fn text_symbols(
    kallsyms: impl BufRead,
    functions: &[&'static str],
) -> std::io::Result<Vec<&'static str>> {
    let mut found = Vec::new();
    for line in kallsyms.lines() {
        let line = line?;
        let mut fields = line.split_whitespace().skip(1);
        let (Some(kind), Some(name)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !kind.eq_ignore_ascii_case("t") {
            continue;
        }
        if let Some(&f) = functions.iter().find(|&&f| f == name) {
            if !found.contains(&f) {
                found.push(f);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_text_symbols_by_exact_name() {
        let kallsyms = "\
ffffffff82088d90 t tcp_v4_send_reset
ffffffff82088e00 t tcp_v6_send_reset.constprop.0
ffffffff83000000 d tcp_v6_send_reset
ffffffffc0001000 t tcp_v6_send_reset_x\t[ipv6]
0000000000000000 T tcp_send_active_reset
";
        let functions = [
            "tcp_v4_send_reset",
            "tcp_v6_send_reset",
            "tcp_send_active_reset",
        ];
        assert_eq!(
            text_symbols(kallsyms.as_bytes(), &functions).unwrap(),
            ["tcp_v4_send_reset", "tcp_send_active_reset"]
        );
    }
}
