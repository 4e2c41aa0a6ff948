//! A hasher for maps keyed by addresses: the caches that turn the agent's shared strings
//! (`Arc<str>`), stacks and IP addresses into what plugins and scripts receive are looked up
//! once or more per event, and SipHash would cost more than the conversion they save.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// One rotate, xor and multiply per word (per byte for byte slices).
#[derive(Default)]
pub struct AddrHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(K);
    }
}

/// A `HashMap` with [`AddrHasher`].
pub type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;
