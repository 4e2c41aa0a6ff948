//! TC programs attached the classic way, for kernels without TCX links (before 6.6): a
//! `clsact` qdisc on the interface and one `bpf` filter in direct-action mode per program,
//! made and removed over rtnetlink (what `tc qdisc add dev X clsact` and `tc filter add dev X
//! ingress bpf da fd N` do).
//!
//! Other filters on the interface (a CNI's) are left alone:
//! - a clsact qdisc already there is used as it is, and the qdisc is never deleted, not even
//!   one we made: deleting a clsact deletes every filter on it, and there is no "delete if
//!   empty", so a CNI that added a filter to it meanwhile would lose it; an empty clsact costs
//!   a packet a pointer test.
//! - each filter of ours takes a priority of its own, [`PRIORITY_BASE`] plus the probe's slot
//!   (the next free one when another filter has it), so it never shares a priority with, nor
//!   replaces, another filter (priority 1, Cilium's default, is left to it: a CNI that
//!   replaces its filter there would take ours). Filters at lower numbers run first: one that
//!   ends classification (`TC_ACT_OK`, a redirect) hides the packet from us, as a TCX program
//!   before ours would. Filters at higher numbers (`tc`'s automatic priorities start at 49152)
//!   see every packet: our programs return `TCX_NEXT` (-1), which cls_bpf in direct-action
//!   mode reads as `TC_ACT_UNSPEC`, "go on with the next filter".
//!
//! A filter, unlike a TCX link, outlives the fd it was made from, so dropping [`Filters`]
//! deletes ours explicitly. A killed agent cannot: its filters keep running into maps nobody
//! reads. Each filter is named `sonde-<probe>-<direction>-<pid>` (the `bpf` filter's name,
//! shown by `tc filter show`), and attaching first deletes the filters of the same probe and
//! direction whose agent is gone (see [`is_stale`]); another live agent's (a `sonde trace`
//! beside the agent) are left.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::Socket;
use crate::TcDirection;

/// Where Sonde's filters start: after the low priorities CNIs take (Cilium's 1), before those
/// `tc` numbers itself (49152 and down).
pub const PRIORITY_BASE: u16 = 20000;
/// The handle of our filter within its own priority (the only filter there).
const HANDLE: u32 = 1;

/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `ETH_P_ALL` in network order, as `tcm_info` carries the protocol.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

/// The filters of one probe on one interface; dropping it deletes them.
#[derive(Debug)]
pub struct Filters {
    ifindex: u32,
    /// (hook, name) of each filter made.
    made: Vec<(TcDirection, String)>,
}

/// The clsact hook of a direction: `ffff:fff2` (ingress) or `ffff:fff3` (egress).
fn parent(direction: TcDirection) -> u32 {
    match direction {
        TcDirection::Ingress => 0xffff_fff2,
        TcDirection::Egress => 0xffff_fff3,
    }
}

fn direction_name(direction: TcDirection) -> &'static str {
    match direction {
        TcDirection::Ingress => "ingress",
        TcDirection::Egress => "egress",
    }
}

/// The name our filter carries: `sonde-<probe>-<direction>-<pid>`.
fn filter_name(probe: &str, direction: TcDirection, pid: u32) -> String {
    format!("sonde-{probe}-{}-{pid}", direction_name(direction))
}

/// Attaches each program as a direct-action `bpf` filter on `ifindex`, making the clsact
/// qdisc if there is none, after deleting stale filters of the same probe. `slot` (the
/// probe's among the TC probes) picks the preferred priority.
pub fn attach(
    probe: &str,
    ifindex: u32,
    programs: &[(TcDirection, OwnedFd)],
    slot: u16,
) -> io::Result<Filters> {
    let mut sock = Socket::open(0)?;
    ensure_clsact(&mut sock, ifindex).map_err(|e| sock.explain(e))?;
    let pid = std::process::id();
    let mut filters = Filters {
        ifindex,
        made: Vec::new(),
    };
    for (direction, prog) in programs {
        let hook = parent(*direction);
        remove_stale(&mut sock, ifindex, probe, *direction).map_err(|e| sock.explain(e))?;
        let name = filter_name(probe, *direction, pid);
        let preferred = PRIORITY_BASE.saturating_add(slot);
        let prio = add_filter(&mut sock, ifindex, hook, prog, &name, preferred)
            .map_err(|e| sock.explain(e))?;
        tracing::debug!(probe, ifindex, prio, filter = %name, "added a bpf filter");
        // Kept at once: a failure on the next direction deletes this one with `filters`.
        filters.made.push((*direction, name));
    }
    Ok(filters)
}

/// Deletes the filters of `probe` in `direction` on `ifindex` left by an agent that is gone
/// (see [`is_stale`]).
fn remove_stale(
    sock: &mut Socket,
    ifindex: u32,
    probe: &str,
    direction: TcDirection,
) -> io::Result<()> {
    let hook = parent(direction);
    let prefix = format!("sonde-{probe}-{}-", direction_name(direction));
    for f in filters(sock, ifindex, hook)? {
        let Some(pid) = f.name.as_deref().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if pid.parse().is_ok_and(is_stale) {
            delete_filter(sock, ifindex, hook, &f)?;
            tracing::info!(
                probe,
                ifindex,
                filter = f.name.as_deref().unwrap_or_default(),
                "deleted a stale filter of an earlier agent"
            );
        }
    }
    Ok(())
}

/// Deletes stale filters of `probe` on `ifindex` (both directions), for a kernel where the
/// probe now runs as TCX links; failures are only logged, the links work regardless.
pub fn remove_stale_quietly(probe: &str, ifindex: u32) {
    let result = Socket::open(0).and_then(|mut sock| {
        for direction in [TcDirection::Ingress, TcDirection::Egress] {
            remove_stale(&mut sock, ifindex, probe, direction)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::debug!(probe, ifindex, error = %e, "cannot look for stale TC filters");
    }
}

/// A filter whose agent is gone: its pid is ours (an earlier agent in a pid namespace that
/// gave this one the same pid, or one of ours not deleted), or no live process of the same
/// program (our own command name) has it.
fn is_stale(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let comm_state = |path: &str| -> Option<(String, char)> {
        let stat = std::fs::read_to_string(path).ok()?;
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        Some((comm, tail.trim_start().chars().next()?))
    };
    let Some((ours, _)) = comm_state("/proc/self/stat") else {
        return false;
    };
    match comm_state(&format!("/proc/{pid}/stat")) {
        // A zombie or dead task holds no filter.
        Some((comm, state)) => comm != ours || matches!(state, 'Z' | 'X' | 'x'),
        None => true,
    }
}

/// Makes the clsact qdisc on `ifindex`, or finds one there. Any other qdisc at the ingress
/// parent (the older `ingress` qdisc, which has no egress hook) is an error naming it.
fn ensure_clsact(sock: &mut Socket, ifindex: u32) -> io::Result<()> {
    let msg = tcmsg(ifindex, CLSACT_HANDLE, TcHandle::CLSACT, 0, kind("clsact"));
    match sock.request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => {
            tracing::debug!(ifindex, "made a clsact qdisc");
            return Ok(());
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let msg = tcmsg(ifindex, 0, TcHandle::CLSACT, 0, Vec::new());
    // The kernel answers a qdisc GET as a notification, sent back to us only with ECHO.
    let kind = sock
        .request(RouteNetlinkMessage::GetQueueDiscipline(msg), NLM_F_ECHO)?
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) => kind_of(q),
            _ => None,
        })
        .unwrap_or_default();
    if kind == "clsact" {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the interface's ingress qdisc is {kind:?}, not the clsact that TC programs \
             need without TCX"
        )))
    }
}

/// Adds our filter at the first free priority from `preferred`, and returns the priority.
fn add_filter(
    sock: &mut Socket,
    ifindex: u32,
    hook: u32,
    prog: &OwnedFd,
    name: &str,
    preferred: u16,
) -> io::Result<u16> {
    let mut used: BTreeSet<u16> = filters(sock, ifindex, hook)?
        .iter()
        .map(|f| f.prio)
        .collect();
    // Another filter may take a priority between the dump and the request: try the next.
    for _ in 0..16 {
        let prio = (preferred..=u16::MAX)
            .find(|p| !used.contains(p))
            .ok_or_else(|| io::Error::other("no free filter priority"))?;
        let msg = filter_message(ifindex, hook, prio, prog.as_raw_fd() as u32, name);
        match sock.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => return Ok(prio),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                used.insert(prio);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "no free filter priority: other filters kept taking them",
    ))
}

impl Drop for Filters {
    /// Deletes the filters named as ours on their hooks (found by name, so a filter someone
    /// else put at our priority after ours was removed is left alone).
    fn drop(&mut self) {
        if self.made.is_empty() {
            return;
        }
        let result = Socket::open(0).and_then(|mut sock| {
            for (direction, name) in &self.made {
                let hook = parent(*direction);
                let deleted = filters(&mut sock, self.ifindex, hook).and_then(|found| {
                    found
                        .iter()
                        .filter(|f| f.name.as_deref() == Some(name.as_str()))
                        .try_for_each(|f| delete_filter(&mut sock, self.ifindex, hook, f))
                });
                deleted.map_err(|e| sock.explain(e))?;
            }
            Ok(())
        });
        match result {
            // The interface went, and its filters with it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => {}
            Err(e) => {
                tracing::warn!(ifindex = self.ifindex, error = %e, "cannot delete our TC filters")
            }
            Ok(()) => {}
        }
    }
}

/// One filter of a hook as a dump lists it (a priority with no handle stands for the
/// classifier instance that holds that priority's filters).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    prio: u16,
    protocol: u16,
    handle: u32,
    kind: String,
    /// A `bpf` filter's name.
    name: Option<String>,
}

/// Every filter on hook `hook` of `ifindex` (none when it has no clsact qdisc).
fn filters(sock: &mut Socket, ifindex: u32, hook: u32) -> io::Result<Vec<Filter>> {
    let msg = tcmsg(ifindex, 0, hook.into(), 0, Vec::new());
    Ok(sock
        .dump(RouteNetlinkMessage::GetTrafficFilter(msg))?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(parse_filter(f)),
            _ => None,
        })
        .collect())
}

fn parse_filter(msg: &TcMessage) -> Filter {
    let info = msg.header.info;
    let kind = kind_of(msg).unwrap_or_default();
    let name = (kind == "bpf")
        .then(|| {
            msg.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                    _ => None,
                }),
                _ => None,
            })
        })
        .flatten();
    Filter {
        prio: (info >> 16) as u16,
        protocol: (info & 0xffff) as u16,
        handle: msg.header.handle.into(),
        kind,
        name,
    }
}

/// The kind (`TCA_KIND`) of a qdisc or filter.
fn kind_of(msg: &TcMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(kind) => Some(kind.clone()),
        _ => None,
    })
}

fn kind(kind: &str) -> Vec<TcAttribute> {
    vec![TcAttribute::Kind(kind.into())]
}

fn delete_filter(sock: &mut Socket, ifindex: u32, hook: u32, f: &Filter) -> io::Result<()> {
    let msg = tcmsg(
        ifindex,
        f.handle,
        hook.into(),
        (f.prio as u32) << 16 | f.protocol as u32,
        kind(&f.kind),
    );
    match sock.request(RouteNetlinkMessage::DelTrafficFilter(msg), 0) {
        // Gone meanwhile.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Our filter: program `fd` as a `bpf` filter in direct-action mode named `name`, at
/// priority `prio` on hook `hook`.
fn filter_message(ifindex: u32, hook: u32, prio: u16, fd: u32, name: &str) -> TcMessage {
    let mut attributes = kind("bpf");
    attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    tcmsg(ifindex, HANDLE, hook.into(), tc_info(prio), attributes)
}

/// `tcm_info` of a filter of ours: priority and protocol (all).
fn tc_info(prio: u16) -> u32 {
    (prio as u32) << 16 | ETH_P_ALL_BE as u32
}

/// A tc message (family unspecified).
fn tcmsg(
    ifindex: u32,
    handle: u32,
    parent: TcHandle,
    info: u32,
    attributes: Vec<TcAttribute>,
) -> TcMessage {
    let header = TcHeader {
        index: ifindex as i32,
        handle: handle.into(),
        parent,
        info,
        ..TcHeader::default()
    };
    TcMessage::from_parts(header, attributes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    /// Our filter, as sent and as a dump lists it.
    #[test]
    fn filter_messages_round_trip() {
        let msg = filter_message(
            7,
            parent(TcDirection::Egress),
            20001,
            5,
            "sonde-dns-egress-42",
        );
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.emit(&mut bytes);
        // struct tcmsg: ifindex, handle, parent, info.
        let field = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(
            [field(4), field(8), field(12), field(16)],
            [7, HANDLE, 0xffff_fff3, tc_info(20001)]
        );
        let Some(RouteNetlinkMessage::NewTrafficFilter(parsed)) =
            crate::netlink::parse_message(libc::RTM_NEWTFILTER, &bytes)
        else {
            panic!("not a filter");
        };
        let direct = TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction));
        assert!(parsed
            .attributes
            .iter()
            .any(|a| matches!(a, TcAttribute::Options(o) if o.contains(&direct))));
        assert_eq!(
            parse_filter(&parsed),
            Filter {
                prio: 20001,
                protocol: ETH_P_ALL_BE,
                handle: 1,
                kind: "bpf".into(),
                name: Some("sonde-dns-egress-42".into()),
            }
        );
    }

    /// Runs `f` on a thread of its own in a new network namespace, where `ip` and `tc` run
    /// too (a child inherits its thread's namespace).
    fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscall; it moves only this thread.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn run(cmd: &str) {
        let mut words = cmd.split_whitespace();
        let out = std::process::Command::new(words.next().unwrap())
            .args(words)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// (priority, name) of the filters on a hook, the classifier-only lines left out.
    fn listed(ifindex: u32, direction: TcDirection) -> Vec<(u16, String)> {
        let mut sock = Socket::open(0).unwrap();
        let mut out: Vec<(u16, String)> = filters(&mut sock, ifindex, parent(direction))
            .unwrap()
            .into_iter()
            .filter(|f| f.handle != 0 && (f.kind != "u32" || f.handle & 0xfff != 0))
            .map(|f| (f.prio, f.name.unwrap_or(f.kind)))
            .collect();
        out.sort();
        out
    }

    /// On a real interface: a clsact qdisc and a foreign filter at our preferred priority are
    /// kept, a dead agent's filter is replaced, and dropping the links deletes exactly ours.
    #[test]
    fn filters_coexist_replace_stale_ones_and_go_when_dropped() {
        let btf = crate::btf::KernelBtf::load().unwrap();
        let settings = crate::ProbeSettings {
            tc_attach: crate::TcAttach::Clsact,
            ..Default::default()
        };
        let mut probe = crate::LoadedProbe::load(&crate::flow::SPEC, &btf, &settings).unwrap();
        let target = probe.tc_target().unwrap().unwrap();
        assert_eq!(target.mode(), crate::TcMode::Clsact);
        in_new_netns(|| {
            run("ip link add t0 type veth peer name t1");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c"t0".as_ptr()) };
            run("tc qdisc add dev t0 clsact");
            run(
                "tc filter add dev t0 ingress prio 20000 protocol ip u32 match u32 0 0 classid 1:1",
            );
            // What a SIGKILLed agent leaves: its pid is no process's (pid_max is at most 2^22).
            let dead = filter_name("flow", TcDirection::Ingress, 1 << 23);
            let (_, prog) = &target.programs[0];
            let mut sock = Socket::open(0).unwrap();
            add_filter(
                &mut sock,
                ifindex,
                parent(TcDirection::Ingress),
                prog,
                &dead,
                30000,
            )
            .unwrap();

            let links = target.attach(ifindex).unwrap();
            let ours = |d| filter_name("flow", d, std::process::id());
            assert_eq!(
                listed(ifindex, TcDirection::Ingress),
                [(20000, "u32".into()), (20001, ours(TcDirection::Ingress))]
            );
            assert_eq!(
                listed(ifindex, TcDirection::Egress),
                [(20000, ours(TcDirection::Egress))]
            );
            drop(links);
            assert_eq!(
                listed(ifindex, TcDirection::Ingress),
                [(20000, "u32".into())]
            );
            assert_eq!(listed(ifindex, TcDirection::Egress), []);
            // The qdisc stays (its filters are anyone's).
            let msg = tcmsg(ifindex, 0, TcHandle::CLSACT, 0, Vec::new());
            let found = sock
                .request(RouteNetlinkMessage::GetQueueDiscipline(msg), NLM_F_ECHO)
                .unwrap();
            assert_eq!(found.len(), 1);
            let RouteNetlinkMessage::NewQueueDiscipline(qdisc) = &found[0] else {
                panic!("{found:?}");
            };
            assert_eq!(kind_of(qdisc).as_deref(), Some("clsact"));
        });
    }

    /// The kernel's reason reaches the error: a filter on an interface without clsact.
    #[test]
    fn errors_say_what_the_kernel_said() {
        in_new_netns(|| {
            run("ip link add t0 type veth peer name t1");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c"t0".as_ptr()) };
            let mut sock = Socket::open(0).unwrap();
            let msg = filter_message(ifindex, parent(TcDirection::Ingress), 20000, 0, "x");
            let e = sock
                .request(
                    RouteNetlinkMessage::NewTrafficFilter(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .unwrap_err();
            let plain = e.to_string();
            let explained = sock.explain(e).to_string();
            assert!(
                explained.len() > plain.len() + 3 && explained.starts_with(&plain),
                "{explained}"
            );
        });
    }

    #[test]
    fn stale_filters_are_those_of_dead_agents_or_our_pid() {
        assert_eq!(
            filter_name("flow", TcDirection::Ingress, 12),
            "sonde-flow-ingress-12"
        );
        assert!(is_stale(std::process::id()));
        // pid 1 runs, but it is not this program.
        assert!(is_stale(1));
        // No such process (pid_max is at most 2^22).
        assert!(is_stale(u32::MAX));
    }
}
