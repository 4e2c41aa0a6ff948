//! The compile cache (`plugins.cacheDir`): components compiled by an earlier run, so that a
//! restart does not compile them again (seconds for Python and JavaScript plugins).
//!
//! A cached component is native code the agent maps and runs, so nothing in the directory is
//! taken on trust of its name:
//!
//! - the directory must belong to the agent's user and be writable by nobody else (one the
//!   agent owns but that others may write, such as a Kubernetes `emptyDir`, is closed to
//!   0700 first; one that belongs to another user is not used at all);
//! - a key of 32 random bytes lives in it (`key`, mode 0600, made by the agent), and every
//!   cached file ends with an HMAC-SHA256 under that key of what it holds: the module's
//!   SHA-256, the engine's compatibility hash and the compiled bytes. A file is checked
//!   before it is deserialised; a planted file (no key, another key, another module's
//!   artefact under this module's name) or a damaged one is deleted and compiled again, with
//!   a log line and `sonde_plugin_errors_total{kind="cache"}`.
//!
//! Files are `<module sha256>-<engine hash>.cwasm`: another wasmtime or another engine
//! configuration never reads them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The key's file in the cache directory.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// The tag at the end of each cached file.
const TAG_LEN: usize = 32;
/// What the tag covers first: another use of the same key can never be mistaken for this.
const DOMAIN: &[u8] = b"sonde compiled component v1\0";

/// An open, checked cache directory.
pub struct Cache {
    dir: PathBuf,
    key: hmac::Key,
    /// The engine's compatibility hash, in every file's name and tag.
    engine_hash: String,
}

/// What the cache has for a module.
pub enum Lookup {
    Hit(Component),
    Miss,
    /// A file that failed a check (the reason); it was deleted.
    Bad(String),
}

/// Why the cache cannot be used, or a file of it cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory (`plugins.cacheDir`) cannot be used.
    #[error("plugins.cacheDir {dir}: {reason}")]
    Dir { dir: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness for the cache key")]
    NoRandomness,
    #[error("{0}: cannot settle on a key")]
    Unsettled(String),
}

impl CacheError {
    fn write(path: &Path, source: std::io::Error) -> Self {
        CacheError::Write {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Why a file of the cache is not taken.
#[derive(Debug, thiserror::Error)]
enum Untrusted {
    #[error("cannot open it: {0}")]
    Open(std::io::Error),
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("owned by uid {0}, not by the agent")]
    Owner(u32),
    #[error("mode {0:o}: others may read or write it")]
    OpenToOthers(u32),
}

impl Cache {
    /// Opens (or makes) the cache directory for `engine`'s components: checks who owns it,
    /// closes it to others, and reads (or makes) its key. An error is one line.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Cache, CacheError> {
        let shown = dir.display();
        let refused = |reason: String| CacheError::Dir {
            dir: shown.to_string(),
            reason,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| refused(format!("cannot create it: {e}")))?;
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| refused(e.to_string()))?;
        if !meta.is_dir() {
            return Err(refused("not a directory (a symlink is not taken)".into()));
        }
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(refused(format!(
                "owned by uid {}, not by the agent (uid {me}); not used",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| refused(format!("cannot close it to others: {e}")))?;
            tracing::info!(dir = %shown, mode = format!("{:o}", meta.mode() & 0o777), "plugin cache directory closed to others (0700)");
        }
        let key = read_or_make_key(&dir.join(KEY_FILE)).map_err(|e| refused(e.to_string()))?;
        let cache = Cache {
            dir: dir.to_path_buf(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            engine_hash: engine_hash(engine),
        };
        cache.prune();
        Ok(cache)
    }

    /// Removes what no run of this binary reads: components compiled for another engine
    /// (another Sonde version), and files a stopped agent left half written.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mine = format!("-{}.cwasm", self.engine_hash);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let stale = (name.ends_with(".cwasm") && !name.ends_with(&mine))
                || (name.starts_with('.') && name.ends_with(".tmp"));
            // Another agent's write in progress is younger than a minute.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60));
            if stale && (name.ends_with(".cwasm") || old) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The cache file of a module.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    fn tag(&self, sha256: &str, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(DOMAIN);
        ctx.update(sha256.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.engine_hash.as_bytes());
        ctx.update(b"\0");
        ctx.update(body);
        ctx.sign()
    }

    /// The component compiled from the module `sha256`, if the cache has a good one.
    pub fn load(&self, sha256: &str, engine: &Engine) -> Lookup {
        let path = self.path(sha256);
        let bytes = match read_own_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Lookup::Miss,
            Err(e) => return self.reject(&path, e.to_string()),
        };
        if bytes.len() < TAG_LEN {
            return self.reject(&path, "shorter than its tag".into());
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if !same(self.tag(sha256, body).as_ref(), tag) {
            return self.reject(
                &path,
                "its tag does not match (not written by this agent for this module)".into(),
            );
        }
        // SAFETY: the bytes were written by this agent's own `store` for this module and this
        // engine (the tag, under a key only the agent can read, says so); wasmtime checks
        // the engine's compatibility again.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(c) => Lookup::Hit(c),
            Err(e) => self.reject(&path, format!("cannot be loaded: {}", super::one_line(&e))),
        }
    }

    /// Deletes a file that failed a check.
    fn reject(&self, path: &Path, why: String) -> Lookup {
        let _ = std::fs::remove_file(path);
        Lookup::Bad(format!(
            "cached component {} deleted: {why}",
            path.display()
        ))
    }

    /// Writes a compiled component (whole, then renamed into place) with its tag.
    pub fn store(&self, sha256: &str, body: &[u8]) -> Result<(), CacheError> {
        let path = self.path(sha256);
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}.{}.tmp", std::process::id(), unique()));
        let tag = self.tag(sha256, body);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(body)?;
                f.write_all(tag.as_ref())
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CacheError::write(&path, e)
        })
    }
}

/// Compares two tags in constant time.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The engine's compatibility hash, short.
fn engine_hash(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Reads the cache's key, or makes one. A key file the agent did not make alone (another
/// owner, readable by others, the wrong size, a symlink) is replaced: every file tagged with
/// it then fails its check and is compiled again. Agents starting together agree on one key:
/// a new key is written aside and linked into place, which fails if another got there first.
fn read_or_make_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    for _ in 0..3 {
        match read_own_file(path) {
            Ok(Some(bytes)) if bytes.len() == KEY_LEN => {
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(&bytes);
                return Ok(key);
            }
            Ok(None) => {}
            Ok(Some(bytes)) => {
                tracing::warn!(path = %path.display(), len = bytes.len(), "plugin cache key has the wrong size; making a new one");
                let _ = std::fs::remove_file(path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "plugin cache key not taken; making a new one");
                let _ = std::fs::remove_file(path);
            }
        }
        let mut key = [0u8; KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| CacheError::NoRandomness)?;
        let aside = path.with_extension(format!("{}.{}.new", std::process::id(), unique()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&aside)
            .and_then(|mut f| f.write_all(&key))
            .map_err(|e| CacheError::write(&aside, e))?;
        let linked = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => return Ok(key),
            // Another agent's key: read it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CacheError::write(path, e)),
        }
    }
    Err(CacheError::Unsettled(path.display().to_string()))
}

/// A number no other call in this process gets, for file names.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A file's content if it exists, is a regular file (not a symlink), belongs to the agent's
/// user and is readable by nobody else.
fn read_own_file(path: &Path) -> Result<Option<Vec<u8>>, Untrusted> {
    let mut f: File = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Untrusted::Open(e)),
    };
    let meta = f.metadata().map_err(Untrusted::Read)?;
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err(Untrusted::NotRegular);
    }
    if meta.uid() != me {
        return Err(Untrusted::Owner(meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Untrusted::OpenToOthers(meta.mode() & 0o777));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes).map_err(Untrusted::Read)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: its magic and version.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";
    const SHA: &str = "00aa";
    const OTHER: &str = "11bb";

    fn engine() -> Engine {
        crate::plugin_host::PluginHost::engine().unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sonde-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    fn bad(lookup: Lookup) -> String {
        match lookup {
            Lookup::Bad(why) => why,
            Lookup::Hit(_) => panic!("a hit"),
            Lookup::Miss => panic!("a miss"),
        }
    }

    #[test]
    fn a_stored_component_comes_back_and_planted_ones_are_deleted() {
        let engine = engine();
        let dir = temp("roundtrip");
        let cache = Cache::open(&dir, &engine).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert!(matches!(cache.load(SHA, &engine), Lookup::Miss));
        let compiled = engine.precompile_component(EMPTY).unwrap();
        cache.store(SHA, &compiled).unwrap();
        assert_eq!(mode(&cache.path(SHA)), 0o600);
        assert!(matches!(cache.load(SHA, &engine), Lookup::Hit(_)));
        // The same cache opened again (a restart) has the same key.
        let again = Cache::open(&dir, &engine).unwrap();
        assert!(matches!(again.load(SHA, &engine), Lookup::Hit(_)));

        // Another module's artefact under this module's name.
        std::fs::copy(cache.path(SHA), cache.path(OTHER)).unwrap();
        let why = bad(cache.load(OTHER, &engine));
        assert!(why.contains("tag does not match"), "{why}");
        assert!(!cache.path(OTHER).exists(), "deleted");
        // Compiled code without a tag (what wasmtime writes), or under another key.
        let planted = |bytes: &[u8]| {
            std::fs::write(cache.path(OTHER), bytes).unwrap();
            std::fs::set_permissions(cache.path(OTHER), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        };
        planted(&compiled);
        assert!(bad(cache.load(OTHER, &engine)).contains("tag does not match"));
        let foreign = temp("foreign");
        let other_cache = Cache::open(&foreign, &engine).unwrap();
        other_cache.store(OTHER, &compiled).unwrap();
        planted(&std::fs::read(other_cache.path(OTHER)).unwrap());
        assert!(bad(cache.load(OTHER, &engine)).contains("tag does not match"));
        // Truncated, and shorter than a tag.
        let whole = std::fs::read(cache.path(SHA)).unwrap();
        std::fs::write(cache.path(SHA), &whole[..whole.len() / 2]).unwrap();
        assert!(bad(cache.load(SHA, &engine)).contains("tag does not match"));
        planted(b"short");
        assert!(bad(cache.load(OTHER, &engine)).contains("shorter than its tag"));
        // Readable by others, or a symlink: not taken.
        cache.store(SHA, &compiled).unwrap();
        std::fs::set_permissions(cache.path(SHA), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(bad(cache.load(SHA, &engine)).contains("mode 644"));
        cache.store(SHA, &compiled).unwrap();
        std::fs::rename(cache.path(SHA), dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), cache.path(SHA)).unwrap();
        assert!(bad(cache.load(SHA, &engine)).contains("cannot open it"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&foreign);
    }

    #[test]
    fn another_engines_files_are_removed_at_open() {
        let engine = engine();
        let dir = temp("prune");
        let cache = Cache::open(&dir, &engine).unwrap();
        let compiled = engine.precompile_component(EMPTY).unwrap();
        cache.store(SHA, &compiled).unwrap();
        let foreign = dir.join(format!("{SHA}-0123456789abcdef.cwasm"));
        std::fs::write(&foreign, b"older version").unwrap();
        let fresh_tmp = dir.join(format!(".{SHA}.1.2.tmp"));
        std::fs::write(&fresh_tmp, b"being written").unwrap();
        Cache::open(&dir, &engine).unwrap();
        assert!(!foreign.exists());
        assert!(cache.path(SHA).exists());
        assert!(fresh_tmp.exists(), "a write in progress is left alone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_directory_is_closed_and_a_loose_key_is_replaced() {
        let engine = engine();
        let dir = temp("modes");
        std::fs::create_dir_all(&dir).unwrap();
        // A world-writable directory the agent owns (a Kubernetes emptyDir): closed first.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let cache = Cache::open(&dir, &engine).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let compiled = engine.precompile_component(EMPTY).unwrap();
        cache.store(SHA, &compiled).unwrap();
        // A key others could read is not a secret: a new one is made, and what the old
        // one tagged no longer passes.
        let key = dir.join(KEY_FILE);
        let old = std::fs::read(&key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = Cache::open(&dir, &engine).unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), old);
        assert_eq!(mode(&key), 0o600);
        assert!(bad(reopened.load(SHA, &engine)).contains("tag does not match"));
        // Not a directory, or a symlink to one: refused with one line.
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        let e = Cache::open(&file, &engine).err().unwrap().to_string();
        assert!(e.contains("not a directory") && !e.contains('\n'), "{e}");
        let link = temp("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            Cache::open(&link, &engine),
            Err(CacheError::Dir { reason, .. }) if reason.contains("symlink")
        ));
        let _ = std::fs::remove_file(&link);
        // Another user's directory is not used at all.
        let theirs = temp("theirs");
        std::fs::create_dir_all(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = Cache::open(&theirs, &engine).err().unwrap().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        let _ = std::fs::remove_dir_all(&theirs);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
