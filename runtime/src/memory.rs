//! What the agent asks of the C allocator (glibc's malloc, which Rust's default allocator
//! calls on Linux) so that its resident memory stays near what it uses.

/// How many arenas malloc may make. glibc makes one per thread that allocates at once, up
/// to eight per core, each keeping the peak of what its threads ever held (freed blocks
/// among live ones are not returned). The agent's threads allocate little and rarely
/// together: two arenas keep several MiB less resident after the probes load than one per
/// thread, measured when ready with the default config (docs/benchmarks.md).
const ARENAS: libc::c_int = 2;

/// Limits malloc's arenas (see [`ARENAS`]); call before any thread starts.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets one of malloc's tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hands the memory malloc holds free back to the kernel (glibc keeps freed blocks for
/// reuse): after work that allocates much and keeps little, such as loading probes or
/// building a scrape.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
