//! What the agent asks of the C allocator (glibc's malloc, which Rust's default allocator
//! calls on Linux) so that its resident memory stays near what it uses.

/// How many arenas malloc may make. glibc makes one per thread that allocates at once, up
/// to eight per core, each keeping the peak of what its threads ever held (freed blocks
/// among live ones are not returned). The agent's threads allocate little and rarely
/// together: two arenas keep several MiB less resident after the probes load than one per
/// thread, measured when ready with the default config (docs/benchmarks.md).
const ARENAS: libc::c_int = 2;

/// Blocks at least this large get mappings of their own, unmapped when freed. glibc starts
/// at 128 KiB but raises the threshold to the size of each such block freed (up to 32 MiB),
/// so that after the kernel's BTF (megabytes, parsed to load the probes) is freed, large
/// blocks land among small live ones in an arena and its pages stay resident. A fixed
/// threshold turns that off. Measured when ready with the default config
/// (docs/benchmarks.md): 3.6-3.8 MiB of anonymous memory in every run instead of 3.8-18, and
/// a peak of 50 MiB instead of 61. At 256 KiB the drain of an event flood cost 12-15 % more
/// agent CPU (its buffers were mapped and unmapped each batch); at 4 MiB it costs nothing.
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

/// Limits malloc's arenas (see [`ARENAS`]) and fixes its mmap threshold (see
/// [`MMAP_THRESHOLD`]); call before any thread starts.
pub fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets malloc's tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
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
