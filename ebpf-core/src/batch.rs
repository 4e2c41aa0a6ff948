//! Reading a whole per-CPU hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6).
//!
//! The agent reads its probes' counter maps every second. Walking a map key by key costs two
//! syscalls a key (next key, then lookup), and the maps hold a few keys for every pod: at
//! hundreds of pods that is thousands of syscalls a second on an idle node. A batch lookup
//! returns up to [`CHUNK`] keys and their values per call. Counter maps and the namespaces'
//! event buckets are read this way; where the kernel has no batches, they are walked.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` of `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Keys asked for per call.
const CHUNK: usize = 512;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every key of the per-CPU hash map `fd` (keys of type `K`, values `u64` per CPU) with its
/// values summed over the `cpus` possible CPUs. An error of the first call (`EINVAL`:
/// a kernel before 5.6, or a map type without batches) tells the caller to walk the map
/// instead; nothing was read then.
pub fn percpu_sums<K: Pod>(fd: BorrowedFd<'_>, cpus: usize) -> io::Result<Vec<(K, u64)>> {
    let mut out = Vec::new();
    lookup_all::<K>(fd, 8 * cpus, |key, value| {
        out.push((key, percpu_sum(value)))
    })?;
    Ok(out)
}

/// A per-CPU value's `u64` counters (one a CPU, in the kernel's byte order) summed, wrapping
/// as the counters do; trailing bytes short of a counter are ignored.
pub fn percpu_sum(value: &[u8]) -> u64 {
    value
        .chunks_exact(8)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
        .fold(0u64, u64::wrapping_add)
}

/// Every entry of the hash map `fd` (plain or LRU, not per-CPU), as [`percpu_sums`] reads.
pub fn entries<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    lookup_all::<K>(fd, std::mem::size_of::<V>(), |key, value| {
        // SAFETY: the kernel wrote the value in full; V is plain data of that size.
        out.push((key, unsafe {
            std::ptr::read_unaligned(value.as_ptr().cast::<V>())
        }));
    })?;
    Ok(out)
}

/// Calls `each` with every key of the map and its value's bytes (`value_size` of them: the
/// map's value size, or 8 a possible CPU, rounded, for a per-CPU map).
fn lookup_all<K: Pod>(
    fd: BorrowedFd<'_>,
    value_size: usize,
    mut each: impl FnMut(K, &[u8]),
) -> io::Result<()> {
    let key_size = std::mem::size_of::<K>();
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    // The kernel's position in the map between calls (a bucket index for hash maps).
    let (mut from, mut next) = (0u64, 0u64);
    for first in std::iter::once(true).chain(std::iter::repeat(false)) {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &from as *const u64 as u64 },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the attr points at buffers sized for CHUNK keys and values, alive for the
        // call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let last = match rc {
            0 => false,
            _ => match io::Error::last_os_error() {
                // The end of the map: `count` says what this call still returned.
                e if e.raw_os_error() == Some(libc::ENOENT) => true,
                e => return Err(e),
            },
        };
        unpack::<K>(&keys, &values, attr.count as usize, value_size, &mut each);
        if last {
            return Ok(());
        }
        from = next;
    }
    Ok(())
}

/// Calls `each` with the first `count` keys packed in `keys` (each `size_of::<K>()` bytes) and
/// their values packed in `values` (each `value_size` bytes), as one `BPF_MAP_LOOKUP_BATCH`
/// call leaves them. A `count` past what the buffers hold stops at their end.
pub fn unpack<K: Pod>(
    keys: &[u8],
    values: &[u8],
    count: usize,
    value_size: usize,
    mut each: impl FnMut(K, &[u8]),
) {
    let key_size = std::mem::size_of::<K>();
    let held = match value_size {
        0 => keys.len() / key_size.max(1),
        n => (keys.len() / key_size.max(1)).min(values.len() / n),
    };
    for i in 0..count.min(held) {
        let key = &keys[i * key_size..(i + 1) * key_size];
        // SAFETY: `key` is size_of::<K>() bytes; K is plain data, any bytes are a K.
        let key: K = unsafe { std::ptr::read_unaligned(key.as_ptr().cast::<K>()) };
        each(key, &values[i * value_size..(i + 1) * value_size]);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    /// `union bpf_attr` for BPF_MAP_CREATE and BPF_MAP_UPDATE_ELEM, as far as used here.
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        _rest: [u32; 27],
    }

    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
        // SAFETY: attr is a valid bpf_attr prefix for cmd, alive for the call.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as u32,
            )
        }
    }

    /// A map of `map_type` with u32 keys and values of `value_size` bytes, holding `value(k)`
    /// (8 bytes a possible CPU for per-CPU maps) for every key below `keys`. Needs root, as
    /// the agent does (tests/run runs every test as root).
    fn map_of(
        map_type: u32,
        value_size: u32,
        keys: u32,
        value: impl Fn(u32) -> Vec<u64>,
    ) -> OwnedFd {
        let mut create = CreateAttr {
            map_type,
            key_size: 4,
            value_size,
            max_entries: keys * 2,
            ..Default::default()
        };
        let fd = bpf(BPF_MAP_CREATE, &mut create);
        assert!(
            fd >= 0,
            "cannot create a map (run as root): {}",
            io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor nobody else owns.
        let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for key in 0..keys {
            let values = value(key);
            let mut update = UpdateAttr {
                map_fd: map.as_raw_fd() as u32,
                _pad: 0,
                key: &key as *const u32 as u64,
                value: values.as_ptr() as u64,
                flags: 0,
            };
            assert_eq!(bpf(BPF_MAP_UPDATE_ELEM, &mut update), 0, "update {key}");
        }
        map
    }

    /// 2000 keys (several batches), each with a value on every CPU: every key comes back
    /// once, with the sum over CPUs.
    #[test]
    fn a_whole_percpu_map_in_batches() {
        const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
        let cpus = aya::util::nr_cpus().expect("possible CPUs") as u64;
        let map = map_of(BPF_MAP_TYPE_PERCPU_HASH, 8, 2000, |key| {
            (0..cpus).map(|cpu| key as u64 * 10 + cpu).collect()
        });
        let mut got = percpu_sums::<u32>(map.as_fd(), cpus as usize).expect("batch lookup");
        got.sort();
        let want: Vec<(u32, u64)> = (0..2000)
            .map(|k| (k, k as u64 * 10 * cpus + cpus * (cpus - 1) / 2))
            .collect();
        assert_eq!(got, want);
    }

    /// A plain hash map of 1500 entries (values wider than 8 bytes) comes back whole.
    #[test]
    fn a_whole_hash_map_in_batches() {
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let map = map_of(BPF_MAP_TYPE_HASH, 16, 1500, |k| vec![k as u64, !(k as u64)]);
        let mut got = entries::<u32, [u64; 2]>(map.as_fd()).expect("batch lookup");
        got.sort();
        let want: Vec<(u32, [u64; 2])> = (0..1500).map(|k| (k, [k as u64, !(k as u64)])).collect();
        assert_eq!(got, want);
    }

    /// What one call packed: keys and values in order, no further than `count` or the
    /// buffers; a per-CPU value summed.
    #[test]
    fn packed_keys_and_values_unpack_in_order() {
        let keys: Vec<u8> = [7u32, 9, 11].iter().flat_map(|k| k.to_ne_bytes()).collect();
        let values: Vec<u8> = [1u64, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let unpacked = |count: usize, keys: &[u8], values: &[u8], size: usize| {
            let mut got = Vec::new();
            unpack::<u32>(keys, values, count, size, |k, v| {
                got.push((k, percpu_sum(v)))
            });
            got
        };
        assert_eq!(unpacked(3, &keys, &values, 16), [(7, 3), (9, 7), (11, 11)]);
        assert_eq!(unpacked(2, &keys, &values, 16), [(7, 3), (9, 7)]);
        // A count past the buffers, short buffers, a value of no bytes.
        assert_eq!(unpacked(600, &keys, &values, 16).len(), 3);
        assert_eq!(unpacked(600, &keys[..9], &values, 16).len(), 2);
        assert_eq!(unpacked(600, &keys, &values[..40], 16).len(), 2);
        assert_eq!(unpacked(600, &keys, &[], 0), [(7, 0), (9, 0), (11, 0)]);
        assert_eq!(percpu_sum(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), 1);
        assert_eq!(
            percpu_sum(&[u64::MAX.to_ne_bytes(), 2u64.to_ne_bytes()].concat()),
            1
        );
    }
}
