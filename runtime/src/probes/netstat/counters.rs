//! `probes.netstat.counters` and `hostCounters`: which of the series read from a namespace
//! are exported. Every series the probe reads has a name `SECTION:COUNTER`: the section is a
//! `/proc/net` section as the kernel names it (`Tcp`, `TcpExt`, `Udp6`, ...) or, for series
//! that have none, the group's name (`dev`, `sockstat`, `softnet`, `conntrack`, `qdisc`); the
//! counter is the kernel's field name (the `counter` label) or what the family's name says
//! (`dev:receive_bytes`, `sockstat:tcp_inuse`, `qdisc:drops`). A list takes `all`, `default`
//! (the curated set, [`DEFAULT`]), a group (`snmp`, `snmp6`, `netstat`, ...), a section
//! (`TcpExt`, or `TcpExt:*`) and single counters (`TcpExt:ListenOverflows`).

use crate::config::Invalid;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::Group;

/// Where a series comes from: a section of a /proc/net file, or a group without sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Ip,
    Icmp,
    Tcp,
    Udp,
    UdpLite,
    Ip6,
    Icmp6,
    Udp6,
    UdpLite6,
    TcpExt,
    IpExt,
    Dev,
    Sockstat,
    Softnet,
    Conntrack,
    Qdisc,
}

const SECTIONS: [Section; 16] = [
    Section::Ip,
    Section::Icmp,
    Section::Tcp,
    Section::Udp,
    Section::UdpLite,
    Section::Ip6,
    Section::Icmp6,
    Section::Udp6,
    Section::UdpLite6,
    Section::TcpExt,
    Section::IpExt,
    Section::Dev,
    Section::Sockstat,
    Section::Softnet,
    Section::Conntrack,
    Section::Qdisc,
];

/// The groups that hold several sections, by name.
const GROUPS: [(&str, Group); 3] = [
    ("snmp", Group::Snmp),
    ("snmp6", Group::Snmp6),
    ("netstat", Group::Netstat),
];

const DEV: &[&str] = &[
    "receive_bytes",
    "receive_packets",
    "receive_errors",
    "receive_drops",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errors",
    "transmit_drops",
];
const QDISC: &[&str] = &[
    "bytes",
    "packets",
    "drops",
    "requeues",
    "overlimits",
    "backlog_bytes",
    "backlog_packets",
];
const SOFTNET: &[&str] = &["processed", "dropped", "times_squeezed"];

impl Section {
    /// The name before the colon.
    pub fn name(self) -> &'static str {
        match self {
            Section::Ip => "Ip",
            Section::Icmp => "Icmp",
            Section::Tcp => "Tcp",
            Section::Udp => "Udp",
            Section::UdpLite => "UdpLite",
            Section::Ip6 => "Ip6",
            Section::Icmp6 => "Icmp6",
            Section::Udp6 => "Udp6",
            Section::UdpLite6 => "UdpLite6",
            Section::TcpExt => "TcpExt",
            Section::IpExt => "IpExt",
            Section::Dev => "dev",
            Section::Sockstat => "sockstat",
            Section::Softnet => "softnet",
            Section::Conntrack => "conntrack",
            Section::Qdisc => "qdisc",
        }
    }

    /// The group (`probes.netstat.groups`) that reads it.
    pub fn group(self) -> Group {
        match self {
            Section::Ip | Section::Icmp | Section::Tcp | Section::Udp | Section::UdpLite => {
                Group::Snmp
            }
            Section::Ip6 | Section::Icmp6 | Section::Udp6 | Section::UdpLite6 => Group::Snmp6,
            Section::TcpExt | Section::IpExt => Group::Netstat,
            Section::Dev => Group::Dev,
            Section::Sockstat => Group::Sockstat,
            Section::Softnet => Group::Softnet,
            Section::Conntrack => Group::Conntrack,
            Section::Qdisc => Group::Qdisc,
        }
    }

    /// The counters it has on every kernel; `None` where the kernel's names vary by version.
    fn fixed_names(self) -> Option<&'static [&'static str]> {
        match self {
            Section::Dev => Some(DEV),
            Section::Qdisc => Some(QDISC),
            Section::Softnet => Some(SOFTNET),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Section> {
        SECTIONS.into_iter().find(|sec| sec.name() == s)
    }
}

/// The curated per-pod set (`default`): what operators act on. The pod's loopback is left
/// out of its `dev` and `qdisc` series (traffic between a pod's own containers never reaches
/// the network). Left out as well, because a default probe counts the same per pod with
/// more to say: `Tcp:EstabResets` (tcp_reset) and `Tcp:AttemptFails` (tcp_connect, by
/// cause); and `sockstat:tcp_alloc`, about `tcp_inuse + tcp_orphan + tcp_tw`.
pub const DEFAULT: &[(Section, &str)] = &[
    (Section::Tcp, "CurrEstab"),
    (Section::Tcp, "OutSegs"),
    (Section::Tcp, "RetransSegs"),
    (Section::Tcp, "OutRsts"),
    (Section::TcpExt, "ListenOverflows"),
    (Section::TcpExt, "ListenDrops"),
    (Section::TcpExt, "TCPSynRetrans"),
    (Section::TcpExt, "TCPBacklogDrop"),
    (Section::TcpExt, "TCPRcvQDrop"),
    (Section::Udp, "NoPorts"),
    (Section::Udp, "InErrors"),
    (Section::Udp, "RcvbufErrors"),
    (Section::Udp, "SndbufErrors"),
    (Section::Sockstat, "tcp_inuse"),
    (Section::Sockstat, "tcp_orphan"),
    (Section::Sockstat, "tcp_tw"),
    (Section::Sockstat, "udp_inuse"),
    (Section::Dev, "receive_bytes"),
    (Section::Dev, "receive_packets"),
    (Section::Dev, "receive_errors"),
    (Section::Dev, "receive_drops"),
    (Section::Dev, "transmit_bytes"),
    (Section::Dev, "transmit_packets"),
    (Section::Dev, "transmit_errors"),
    (Section::Dev, "transmit_drops"),
    (Section::Qdisc, "drops"),
    (Section::Qdisc, "backlog_packets"),
    (Section::Conntrack, "entries"),
    (Section::Conntrack, "drop"),
    (Section::Conntrack, "insert_failed"),
];

/// The interface the curated set leaves out.
const LOOPBACK: &str = "lo";

/// One entry of a counters list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every series.
    All,
    /// The curated set, [`DEFAULT`].
    Default,
    /// Every series of a group of several sections (`snmp`, `snmp6`, `netstat`).
    Group(Group),
    /// Every series of a section (`TcpExt`, `TcpExt:*`, `dev`).
    Section(Section),
    /// One counter (`TcpExt:ListenOverflows`).
    Counter(Section, String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all"),
            Selector::Default => f.write_str("default"),
            Selector::Group(g) => {
                let name = GROUPS.iter().find(|(_, x)| x == g).map_or("?", |(n, _)| n);
                f.write_str(name)
            }
            Selector::Section(s) => f.write_str(s.name()),
            Selector::Counter(s, name) => write!(f, "{}:{name}", s.name()),
        }
    }
}

/// What is wrong with an entry of `counters`; it says what would do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "{text:?} is not all, default, a group (snmp, snmp6, netstat), a section ({}) or \
         SECTION:COUNTER such as TcpExt:ListenOverflows{hint}",
        section_list()
    )]
    Unknown { text: String, hint: String },
    #[error(
        "unknown section {section:?} in {text:?} (sections: {}){hint}",
        section_list()
    )]
    Section {
        section: String,
        text: String,
        hint: String,
    },
    #[error("{0:?}: the counter after the colon must be a name (letters, digits, _) or *")]
    CounterName(String),
    #[error("{text:?}: {section} has no counter {name:?} (it has {})", names.join(", "))]
    NoCounter {
        text: String,
        section: &'static str,
        name: String,
        names: &'static [&'static str],
    },
}

impl Selector {
    /// Parses one entry; the error says what is wrong with it and what would do.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let s = text.trim();
        match s {
            "all" => return Ok(Selector::All),
            "default" => return Ok(Selector::Default),
            _ => {}
        }
        let Some((section, name)) = s.split_once(':') else {
            if let Some((_, g)) = GROUPS.iter().find(|(n, _)| *n == s) {
                return Ok(Selector::Group(*g));
            }
            if let Some(sec) = Section::parse(s) {
                return Ok(Selector::Section(sec));
            }
            return Err(SelectorError::Unknown {
                text: s.to_string(),
                hint: did_you_mean(s),
            });
        };
        let Some(sec) = Section::parse(section) else {
            return Err(SelectorError::Section {
                section: section.to_string(),
                text: s.to_string(),
                hint: did_you_mean(section),
            });
        };
        if name == "*" {
            return Ok(Selector::Section(sec));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SelectorError::CounterName(s.to_string()));
        }
        if let Some(names) = sec.fixed_names() {
            if !names.contains(&name) {
                return Err(SelectorError::NoCounter {
                    text: s.to_string(),
                    section: sec.name(),
                    name: name.to_string(),
                    names,
                });
            }
        }
        Ok(Selector::Counter(sec, name.to_string()))
    }

    /// The sections it names explicitly, for the checks against `groups`.
    fn sections(&self) -> Vec<Section> {
        match self {
            Selector::All | Selector::Default => Vec::new(),
            Selector::Group(g) => SECTIONS.into_iter().filter(|s| s.group() == *g).collect(),
            Selector::Section(s) | Selector::Counter(s, _) => vec![*s],
        }
    }
}

fn section_list() -> String {
    SECTIONS.map(Section::name).join(", ")
}

/// ` (did you mean TcpExt?)` for a section written in another case.
fn did_you_mean(s: &str) -> String {
    SECTIONS
        .into_iter()
        .find(|sec| sec.name().eq_ignore_ascii_case(s))
        .map(|sec| format!(" (did you mean {}?)", sec.name()))
        .unwrap_or_default()
}

/// A counters list as written: `all`, `default`, or a list of selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters(pub Vec<Selector>);

impl Counters {
    pub fn all() -> Self {
        Counters(vec![Selector::All])
    }

    pub fn curated() -> Self {
        Counters(vec![Selector::Default])
    }

    /// Checks the list against the groups read: a section named explicitly must be read.
    /// `key` names the setting in the error.
    pub fn validate(&self, key: &str, groups: &[Group], pods: bool) -> Result<(), Invalid> {
        for sel in &self.0 {
            for sec in sel.sections() {
                if !groups.contains(&sec.group()) {
                    return Err(Invalid::new(
                        format!("probes.netstat.{key}"),
                        format!(
                            "{sel} is read by group {}, which \
                         probes.netstat.groups leaves out",
                            group_name(sec.group())
                        ),
                    ));
                }
                if pods && sec == Section::Softnet {
                    return Err(Invalid::new(
                        format!("probes.netstat.{key}"),
                        format!(
                            "{sel}: softnet_stat is per CPU, not per pod \
                         (hostCounters has it)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A group's name in `probes.netstat.groups`.
fn group_name(g: Group) -> &'static str {
    match g {
        Group::Snmp => "snmp",
        Group::Snmp6 => "snmp6",
        Group::Netstat => "netstat",
        Group::Dev => "dev",
        Group::Sockstat => "sockstat",
        Group::Softnet => "softnet",
        Group::Conntrack => "conntrack",
        Group::Qdisc => "qdisc",
    }
}

/// Deserializes `counters` or `hostCounters`: one selector or a list of them (serde_yaml_ng's
/// error names the setting and its line).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Counters, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Counters;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("all, default, or a list of counters such as [default, TcpExt:TCPOFODrop]")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Counters, E> {
            Selector::parse(v)
                .map(|s| Counters(vec![s]))
                .map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Counters, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<String>()? {
                out.push(Selector::parse(&v).map_err(de::Error::custom)?);
            }
            Ok(Counters(out))
        }
    }
    d.deserialize_any(V)
}

/// A counters list made ready for matching the series of a reading.
#[derive(Debug, Default)]
pub(super) struct Selection {
    all: bool,
    default: bool,
    groups: HashSet<Group>,
    sections: HashSet<Section>,
    counters: HashMap<Section, HashSet<String>>,
    /// Named counters that matched a series (reading thread only).
    matched: RefCell<HashSet<(Section, String)>>,
}

impl Selection {
    pub(super) fn new(c: &Counters) -> Self {
        let mut s = Selection::default();
        for sel in &c.0 {
            match sel {
                Selector::All => s.all = true,
                Selector::Default => s.default = true,
                Selector::Group(g) => {
                    s.sections
                        .extend(SECTIONS.into_iter().filter(|x| x.group() == *g));
                }
                Selector::Section(x) => {
                    s.sections.insert(*x);
                }
                Selector::Counter(x, name) => {
                    s.counters.entry(*x).or_default().insert(name.clone());
                }
            }
        }
        s.groups = SECTIONS
            .into_iter()
            .filter(|x| {
                s.all
                    || s.sections.contains(x)
                    || s.counters.contains_key(x)
                    || (s.default && DEFAULT.iter().any(|(d, _)| d == x))
            })
            .map(Section::group)
            .collect();
        s
    }

    /// Whether the series `section:name` (of interface `device`, for `dev` and `qdisc`) is
    /// exported.
    pub(super) fn wants(&self, section: Section, name: &str, device: Option<&str>) -> bool {
        if self.all || self.sections.contains(&section) {
            return true;
        }
        if self
            .counters
            .get(&section)
            .is_some_and(|n| n.contains(name))
        {
            self.matched
                .borrow_mut()
                .insert((section, name.to_string()));
            return true;
        }
        self.default
            && device != Some(LOOPBACK)
            && DEFAULT.iter().any(|&(s, n)| s == section && n == name)
    }

    /// Whether anything of `group` may be exported: a group nothing is wanted of is not read.
    pub(super) fn reads(&self, group: Group) -> bool {
        self.groups.contains(&group)
    }

    /// The counters named one by one that no series matched since the selection was made.
    pub(super) fn unmatched(&self) -> Vec<String> {
        let matched = self.matched.borrow();
        let mut out: Vec<String> = self
            .counters
            .iter()
            .flat_map(|(s, names)| names.iter().map(move |n| (*s, n)))
            .filter(|(s, n)| !matched.contains(&(*s, n.to_string())))
            .map(|(s, n)| Selector::Counter(s, n.clone()).to_string())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Counters, String> {
        #[derive(serde::Deserialize, Debug)]
        struct C {
            #[serde(deserialize_with = "deserialize")]
            counters: Counters,
        }
        serde_yaml_ng::from_str::<C>(yaml)
            .map(|c| c.counters)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn selectors_parse() {
        assert_eq!(parse("counters: all").unwrap(), Counters::all());
        assert_eq!(parse("counters: default").unwrap(), Counters::curated());
        assert_eq!(
            parse("counters: [default, TcpExt:TCPOFODrop, Icmp:*, snmp6, dev, qdisc:requeues]")
                .unwrap()
                .0,
            vec![
                Selector::Default,
                Selector::Counter(Section::TcpExt, "TCPOFODrop".into()),
                Selector::Section(Section::Icmp),
                Selector::Group(Group::Snmp6),
                Selector::Section(Section::Dev),
                Selector::Counter(Section::Qdisc, "requeues".into()),
            ]
        );
        assert_eq!(parse("counters: []").unwrap(), Counters(vec![]));
        for s in [
            "all",
            "default",
            "snmp",
            "TcpExt",
            "TcpExt:ListenOverflows",
            "dev:receive_bytes",
        ] {
            assert_eq!(Selector::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong_on_one_line() {
        let refused = |yaml: &str, words: &[&str]| {
            let e = parse(yaml).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains("counters"), "{e}");
            for w in words {
                assert!(e.contains(w), "{w:?} not in {e}");
            }
        };
        refused(
            "counters: [TCPExt:ListenOverflows]",
            &[
                "unknown section \"TCPExt\"",
                "did you mean TcpExt?",
                "line 1",
            ],
        );
        refused(
            "counters: ListenOverflows",
            &["\"ListenOverflows\" is not", "SECTION:COUNTER"],
        );
        refused(
            "counters: [\"TcpExt:\"]",
            &["\"TcpExt:\"", "must be a name"],
        );
        refused(
            "counters: [\"TcpExt:Listen Overflows\"]",
            &["must be a name"],
        );
        refused(
            "counters: [dev:rx_bytes]",
            &["dev has no counter \"rx_bytes\"", "receive_bytes"],
        );
        refused("counters: [qdisc:dropped]", &["qdisc has no counter"]);
        refused(
            "counters: {TcpExt: ListenOverflows}",
            &["counters", "line 1"],
        );
        refused("counters: [[TcpExt]]", &["counters"]);
        refused("counters: 3", &["counters"]);
    }

    #[test]
    fn explicit_sections_must_be_read() {
        let c = parse("counters: [TcpExt:ListenOverflows]").unwrap();
        let e = c.validate("counters", &[Group::Snmp], true).unwrap_err();
        assert_eq!(e.field, "probes.netstat.counters");
        assert!(
            e.reason.starts_with("TcpExt:ListenOverflows") && e.reason.contains("group netstat"),
            "{e}"
        );
        assert!(c.validate("counters", &[Group::Netstat], true).is_ok());
        // all and default take what the groups read.
        assert!(Counters::all().validate("counters", &[], true).is_ok());
        assert!(Counters::curated().validate("counters", &[], true).is_ok());
        let softnet = parse("counters: [softnet]").unwrap();
        let e = softnet
            .validate("counters", &[Group::Softnet], true)
            .unwrap_err();
        assert!(e.reason.contains("per CPU"), "{e}");
        assert!(softnet
            .validate("hostCounters", &[Group::Softnet], false)
            .is_ok());
    }

    #[test]
    fn selections_match_series() {
        let curated = Selection::new(&Counters::curated());
        assert!(curated.wants(Section::TcpExt, "ListenOverflows", None));
        assert!(!curated.wants(Section::TcpExt, "TCPOFODrop", None));
        assert!(curated.wants(Section::Dev, "receive_bytes", Some("eth0")));
        assert!(!curated.wants(Section::Dev, "receive_bytes", Some("lo")));
        assert!(curated.reads(Group::Netstat) && !curated.reads(Group::Snmp6));
        assert!(!curated.reads(Group::Softnet));

        let c = parse("counters: [default, TcpExt:TCPOFODrop, dev:receive_bytes, Icmp6, Nope:x]");
        assert!(c.is_err());
        let c =
            parse("counters: [default, TcpExt:TCPOFODrop, dev:receive_bytes, Icmp6, TcpExt:Nope]")
                .unwrap();
        let s = Selection::new(&c);
        assert!(s.wants(Section::TcpExt, "TCPOFODrop", None));
        assert!(s.wants(Section::Dev, "receive_bytes", Some("lo")));
        assert!(!s.wants(Section::Dev, "transmit_bytes", Some("lo")));
        assert!(s.wants(Section::Icmp6, "InErrors", None) && s.reads(Group::Snmp6));
        assert_eq!(s.unmatched(), vec!["TcpExt:Nope".to_string()]);

        let all = Selection::new(&Counters::all());
        assert!(all.wants(Section::Softnet, "processed", None) && all.reads(Group::Softnet));
        let none = Selection::new(&Counters(vec![]));
        assert!(!none.wants(Section::Tcp, "CurrEstab", None));
        assert!(SECTIONS.iter().all(|s| !none.reads(s.group())));
    }

    #[test]
    fn the_curated_set_is_well_formed() {
        for (s, n) in DEFAULT {
            let sel = Selector::Counter(*s, n.to_string());
            assert_eq!(Selector::parse(&sel.to_string()), Ok(sel.clone()), "{sel}");
            assert_ne!(*s, Section::Softnet, "softnet is not per pod");
        }
        let unique: HashSet<_> = DEFAULT.iter().collect();
        assert_eq!(unique.len(), DEFAULT.len());
    }
}
