//! TC hooks on interfaces: a probe's TC programs are attached as TCX links to each interface
//! the agent watches for it (kernel 6.6 or later), and each interface is listed in the probe's
//! `watched` map when it has one, so its programs know which interfaces carry them.
//!
//! The links are made with the `bpf` syscall from duplicated program fds, so the agent's
//! interface watcher attaches and detaches while the probe's object stays where it is; a link
//! is detached when its fd is closed, and the kernel drops it itself when the interface goes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::TcDirection;

/// The map a TC probe declares to know its interfaces (ifindex -> 1), when it needs to.
pub const WATCHED_MAP: &str = "watched";

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// What attaching a probe's TC programs to an interface needs.
#[derive(Debug)]
pub struct TcTarget {
    pub(crate) programs: Vec<(TcDirection, OwnedFd)>,
    pub(crate) watched: Option<Arc<OwnedFd>>,
}

/// A probe's programs attached to one interface; dropping it detaches them.
#[derive(Debug)]
pub struct TcLinks {
    ifindex: u32,
    _links: Vec<OwnedFd>,
    watched: Option<Arc<OwnedFd>>,
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

/// Sets `key` to `value` in the map `map` (`BPF_MAP_UPDATE_ELEM`).
fn update_elem(map: &OwnedFd, key: u32, value: u32) -> io::Result<()> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(&value as *const u32 as u64).to_ne_bytes());
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
    /// Attaches every TC program of the probe to interface `ifindex` (after the programs
    /// already there: they see packets as the others left them).
    pub fn attach(&self, ifindex: u32) -> io::Result<TcLinks> {
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
        if let Some(map) = &self.watched {
            update_elem(map, ifindex, 1)?;
        }
        Ok(TcLinks {
            ifindex,
            _links: links,
            watched: self.watched.clone(),
        })
    }

    /// A second handle on the same programs and map (for a watcher on another thread).
    pub fn try_clone(&self) -> io::Result<TcTarget> {
        Ok(TcTarget {
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
        if let Some(map) = &self.watched {
            // Gone already when the probe was unloaded first: nothing to undo.
            let _ = delete_elem(map.as_fd(), &self.ifindex);
        }
    }
}
