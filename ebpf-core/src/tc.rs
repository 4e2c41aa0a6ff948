//! TC hooks on interfaces: a probe's TC programs are attached to each interface the agent
//! watches for it, as TCX links where the kernel has them (6.6 or later) or as `bpf` filters
//! on a clsact qdisc (see [`crate::clsact`]), as [`TcAttach`] says; each interface is listed
//! in the probe's `watched` map when it has one, so its programs know which interfaces carry
//! them.
//!
//! Both are made from duplicated program fds, so the agent's interface watcher attaches and
//! detaches while the probe's object stays where it is. A TCX link is detached when its fd is
//! closed; a filter is deleted when its [`TcLinks`] is dropped. The kernel drops either when
//! the interface goes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use aya::Btf;
use aya_obj::btf::BtfKind;

use crate::clsact;
use crate::probe::ProbeError;
use crate::TcDirection;

/// The maps a TC probe declares to know its interfaces, when it needs to: an array for
/// indexes below [`WATCHED_LOW`] (ifindex -> 1, 0 when not watched), whose lookup is a load
/// in the kernel, and a hash for the others (ifindex -> 1).
pub const WATCHED_MAP: &str = "watched";
pub const WATCHED_LOW_MAP: &str = "watched_low";
/// `SONDE_WATCHED_LOW` in sonde_tc.bpf.h: the size of [`WATCHED_LOW_MAP`].
pub const WATCHED_LOW: u32 = 65536;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// How a probe's TC programs are to be attached (`probes.<probe>.attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcAttach {
    /// TCX links where the kernel has them, a clsact qdisc and filters otherwise.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

/// How a probe's TC programs are attached on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcMode {
    /// `BPF_LINK_CREATE` with `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS`.
    Tcx,
    /// A `bpf` filter in direct-action mode on the interface's clsact qdisc.
    Clsact,
}

impl TcAttach {
    pub const NAMES: &'static str = "auto, tcx or clsact";

    pub fn parse(s: &str) -> Option<TcAttach> {
        match s {
            "auto" => Some(TcAttach::Auto),
            "tcx" => Some(TcAttach::Tcx),
            "clsact" => Some(TcAttach::Clsact),
            _ => None,
        }
    }

    /// The mode on a kernel with or without TCX links; `tcx` without them is an error.
    pub fn resolve(self, kernel_has_tcx: bool) -> Result<TcMode, ProbeError> {
        match self {
            TcAttach::Auto if kernel_has_tcx => Ok(TcMode::Tcx),
            TcAttach::Auto | TcAttach::Clsact => Ok(TcMode::Clsact),
            TcAttach::Tcx if kernel_has_tcx => Ok(TcMode::Tcx),
            TcAttach::Tcx => Err(ProbeError::NoTcx),
        }
    }
}

impl TcMode {
    /// `tcx` or `clsact`, as the API and `sonde probes` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx",
            TcMode::Clsact => "clsact",
        }
    }
}

/// Whether the kernel has TCX links (Linux 6.6 or later): its BTF has `struct tcx_link`.
pub fn kernel_has_tcx(btf: &Btf) -> bool {
    btf.id_by_type_name_kind("tcx_link", BtfKind::Struct)
        .is_ok()
}

/// What attaching a probe's TC programs to an interface needs.
#[derive(Debug)]
pub struct TcTarget {
    pub(crate) probe: &'static str,
    pub(crate) mode: TcMode,
    /// The probe's place among the TC probes: which filter priority it prefers.
    pub(crate) slot: u16,
    pub(crate) programs: Vec<(TcDirection, OwnedFd)>,
    pub(crate) watched: Option<Arc<Watched>>,
}

/// A probe's [`WATCHED_LOW_MAP`] and [`WATCHED_MAP`].
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) low: OwnedFd,
    pub(crate) rest: OwnedFd,
}

impl Watched {
    fn add(&self, ifindex: u32) -> io::Result<()> {
        if ifindex < WATCHED_LOW {
            update_elem(&self.low, ifindex, 1u8)
        } else {
            update_elem(&self.rest, ifindex, 1u32)
        }
    }

    fn remove(&self, ifindex: u32) -> io::Result<()> {
        if ifindex < WATCHED_LOW {
            update_elem(&self.low, ifindex, 0u8)
        } else {
            delete_elem(self.rest.as_fd(), &ifindex)
        }
    }
}

/// A probe's programs attached to one interface; dropping it detaches them.
#[derive(Debug)]
pub struct TcLinks {
    ifindex: u32,
    _links: Vec<OwnedFd>,
    _filters: Option<clsact::Filters>,
    watched: Option<Arc<Watched>>,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 64]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-padded `union bpf_attr` of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets `key` to `value` in the map `map` (`BPF_MAP_UPDATE_ELEM`); `V` is the map's value.
fn update_elem<V>(map: &OwnedFd, key: u32, value: V) -> io::Result<()> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(&value as *const V as u64).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Deletes `key` from the map `map` (`BPF_MAP_DELETE_ELEM`); a missing key is not an error.
pub(crate) fn delete_elem<K>(map: std::os::fd::BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key as *const K as u64).to_ne_bytes());
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}

impl TcTarget {
    /// How the programs are attached.
    pub fn mode(&self) -> TcMode {
        self.mode
    }

    /// Attaches every TC program of the probe to interface `ifindex`: as TCX links, after
    /// the programs already there (they see packets as the others left them), or as filters
    /// (see [`crate::clsact`] for where they go among the others).
    pub fn attach(&self, ifindex: u32) -> io::Result<TcLinks> {
        let (links, filters) = match self.mode {
            TcMode::Tcx => {
                // A killed agent's filters from a run in clsact mode would count on unread.
                clsact::remove_stale_quietly(self.probe, ifindex);
                (self.attach_tcx(ifindex)?, None)
            }
            TcMode::Clsact => (
                Vec::new(),
                Some(clsact::attach(
                    self.probe,
                    ifindex,
                    &self.programs,
                    self.slot,
                )?),
            ),
        };
        if let Some(watched) = &self.watched {
            watched.add(ifindex)?;
        }
        Ok(TcLinks {
            ifindex,
            _links: links,
            _filters: filters,
            watched: self.watched.clone(),
        })
    }

    fn attach_tcx(&self, ifindex: u32) -> io::Result<Vec<OwnedFd>> {
        let mut links = Vec::with_capacity(self.programs.len());
        for (direction, prog) in &self.programs {
            let mut attr = [0u8; 64];
            attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
            attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            let attach_type = match direction {
                TcDirection::Ingress => BPF_TCX_INGRESS,
                TcDirection::Egress => BPF_TCX_EGRESS,
            };
            attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
            let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
            // SAFETY: the syscall returned a new fd that nothing else owns.
            links.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
        }
        Ok(links)
    }

    /// A second handle on the same programs and map (for a watcher on another thread).
    pub fn try_clone(&self) -> io::Result<TcTarget> {
        Ok(TcTarget {
            probe: self.probe,
            mode: self.mode,
            slot: self.slot,
            programs: self
                .programs
                .iter()
                .map(|(d, fd)| Ok((*d, fd.as_fd().try_clone_to_owned()?)))
                .collect::<io::Result<_>>()?,
            watched: self.watched.clone(),
        })
    }
}

impl TcLinks {
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

impl Drop for TcLinks {
    fn drop(&mut self) {
        if let Some(watched) = &self.watched {
            // Gone already when the probe was unloaded first: nothing to undo.
            let _ = watched.remove(self.ifindex);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_tcx_where_the_kernel_has_it() {
        assert_eq!(TcAttach::Auto.resolve(true).unwrap(), TcMode::Tcx);
        assert_eq!(TcAttach::Auto.resolve(false).unwrap(), TcMode::Clsact);
        assert_eq!(TcAttach::Clsact.resolve(true).unwrap(), TcMode::Clsact);
        assert_eq!(TcAttach::Tcx.resolve(true).unwrap(), TcMode::Tcx);
        let e = TcAttach::Tcx.resolve(false).unwrap_err().to_string();
        assert!(
            e.contains("attach: tcx") && e.contains("6.6") && e.contains("clsact"),
            "{e}"
        );
        assert_eq!(TcAttach::parse("clsact"), Some(TcAttach::Clsact));
        assert_eq!(TcAttach::parse("TCX"), None);
    }

    #[test]
    fn this_kernel_has_tcx() {
        // The test machine's kernel (6.6 or later); the kernel matrix covers older ones.
        let btf = Btf::from_sys_fs().unwrap();
        assert!(kernel_has_tcx(&btf));
    }
}
