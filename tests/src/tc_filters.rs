//! TC filters on the host-side interfaces, as `tc -s -j filter show` lists them: Sonde's own
//! (`sonde-<probe>-<direction>-<pid>` bpf filters, in `attach: clsact` mode) and a CNI's,
//! stood in for by [`ForeignFilters`]: `bpf` filters (a classic BPF `ret #-1`, matching every
//! packet) that count each packet with a `mirred` mirror action (the test kernel has neither
//! `matchall` nor `gact`, and `u32` lists the hash tables of both clsact hooks under each),
//! whose copies go to a veth whose other end sits in a namespace of its own, where they die.

use serde_json::Value;

use crate::{run_command, Netns};

/// What `attach: auto` picks on this kernel, `tcx` or `clsact`: TCX where the kernel's BTF
/// names `struct tcx_link` (its string table holds the name between NULs; `bpf_tcx_link` and
/// the like do not match).
pub fn auto_attach_mode() -> &'static str {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("read the kernel's BTF");
    if btf.windows(10).any(|w| w == b"\0tcx_link\0") {
        "tcx"
    } else {
        "clsact"
    }
}

/// One filter of a hook (the classifier-only lines of the listing left out).
#[derive(Debug, Clone, PartialEq)]
pub struct TcFilter {
    pub pref: u16,
    pub kind: String,
    /// A bpf filter's name.
    pub name: Option<String>,
    /// Packets its actions saw (a foreign filter's mirror).
    pub packets: Option<u64>,
}

/// The filters on `dev`'s `hook` (`ingress` or `egress`), in priority order; none when it has
/// no clsact qdisc.
pub fn tc_filters(dev: &str, hook: &str) -> Vec<TcFilter> {
    let out = run_command(&format!("tc -s -j filter show dev {dev} {hook}"));
    if out.trim().is_empty() {
        return Vec::new();
    }
    let list: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("`tc -j filter show dev {dev} {hook}` is not JSON ({e}): {out}")
    });
    list.iter()
        .filter_map(|f| {
            // A priority's classifier-only line has no (or empty) options.
            let options = f.get("options")?.as_object()?;
            if options.is_empty() {
                return None;
            }
            Some(TcFilter {
                pref: f["pref"].as_u64()? as u16,
                kind: f["kind"].as_str()?.to_string(),
                name: options
                    .get("bpf_name")
                    .and_then(Value::as_str)
                    .map(String::from),
                packets: options
                    .get("actions")
                    .and_then(|a| a[0]["stats"]["packets"].as_u64()),
            })
        })
        .collect()
}

/// The names of Sonde's filters on both hooks of `dev`, sorted.
pub fn sonde_filters(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = ["ingress", "egress"]
        .iter()
        .flat_map(|hook| tc_filters(dev, hook))
        .filter_map(|f| f.name)
        .filter(|n| n.starts_with("sonde-"))
        .collect();
    names.sort();
    names
}

/// The kinds of `dev`'s qdiscs (`noqueue`, `clsact`, ...).
pub fn qdisc_kinds(dev: &str) -> Vec<String> {
    let out = run_command(&format!("tc -j qdisc show dev {dev}"));
    let list: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    list.iter()
        .filter_map(|q| q["kind"].as_str().map(String::from))
        .collect()
}

/// A CNI's filters on a host-side interface: a clsact qdisc, then counting `bpf` filters put
/// there before Sonde starts (of the same kind and protocol as Sonde's, which must not share
/// their priorities). Their mirror target is deleted when dropped.
pub struct ForeignFilters {
    pub dev: String,
    mirror: String,
    _sink: Netns,
}

impl ForeignFilters {
    /// Adds a clsact qdisc to `dev` and a mirror target named `mirror` (a free interface
    /// name that no watched pattern matches).
    pub fn new(dev: &str, mirror: &str) -> ForeignFilters {
        let sink = Netns::new("sink");
        run_command(&format!(
            "ip link add {mirror} type veth peer name eth0 netns {}",
            sink.name()
        ));
        let filters = ForeignFilters {
            dev: dev.to_string(),
            mirror: mirror.to_string(),
            _sink: sink,
        };
        std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{mirror}/disable_ipv6"),
            "1",
        )
        .expect("disable IPv6 on the mirror target");
        run_command(&format!("ip link set {mirror} up"));
        filters._sink.ip("link set eth0 up");
        run_command(&format!("tc qdisc add dev {dev} clsact"));
        filters
    }

    /// A filter at `pref` on `hook` that counts every packet, then either lets the next
    /// filter see it (`continue`) or ends classification (`pass`, a CNI's accept).
    pub fn add(&self, hook: &str, pref: u16, control: &str) {
        let pref = pref.to_string();
        let args = [
            "filter",
            "add",
            "dev",
            &self.dev,
            hook,
            "prio",
            &pref,
            "protocol",
            "all",
            "bpf",
            "bytecode",
            "1,6 0 0 4294967295,",
            "action",
            "mirred",
            "egress",
            "mirror",
            "dev",
            &self.mirror,
            control,
        ];
        let out = std::process::Command::new("tc")
            .args(args)
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Packets the foreign filter at `pref` on `hook` counted, if it is there.
    pub fn packets(&self, hook: &str, pref: u16) -> Option<u64> {
        tc_filters(&self.dev, hook)
            .into_iter()
            .find(|f| f.pref == pref && f.name.is_none())
            .and_then(|f| f.packets)
    }
}

impl Drop for ForeignFilters {
    fn drop(&mut self) {
        // The filters go with `dev` (its pod's veth); the mirror target is ours.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.mirror])
            .output();
    }
}
