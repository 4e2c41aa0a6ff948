//! Plugin directories: every bundle under them is loaded, and the directories are watched so
//! that added, changed and removed bundles take effect while the agent runs. A directory can
//! be a bundle itself or hold one bundle per subdirectory; the layout kubelet makes for a
//! mounted ConfigMap (files that are symlinks into `..data`, itself a symlink swapped
//! atomically) works because bundles are read through their links, and `..`-prefixed
//! entries are skipped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::bundle::{sha256_hex, Bundle, BundleError};
use super::{PluginHost, PluginStatus};

const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// A bundle directory as last seen.
struct Seen {
    fingerprint: String,
    /// The plugin it runs, once loaded.
    running: Option<String>,
    /// Why the last version was refused.
    refused: Option<(String, String)>,
}

pub struct PluginDirs {
    host: Arc<PluginHost>,
    dirs: Vec<PathBuf>,
    seen: Mutex<HashMap<PathBuf, Seen>>,
    plugins: Mutex<BTreeMap<String, Arc<Mutex<PluginStatus>>>>,
}

/// Bundle directories under `dir`: `dir` itself when it holds a plugin.yaml, else its
/// subdirectories that do.
fn bundle_dirs(dir: &Path) -> Vec<PathBuf> {
    if dir.join(Bundle::MANIFEST).is_file() {
        return vec![dir.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.join(Bundle::MANIFEST).is_file())
        .collect();
    found.sort();
    found
}

/// What identifies a bundle's content without reading a large module: the manifest's bytes
/// and the module's resolved path, size and modification time.
fn fingerprint(dir: &Path) -> String {
    let manifest = std::fs::read(dir.join(Bundle::MANIFEST)).unwrap_or_default();
    let mut parts = sha256_hex(&manifest);
    if let Ok(m) = super::manifest::Manifest::parse(&String::from_utf8_lossy(&manifest), "") {
        let module = dir.join(m.file());
        let resolved = std::fs::canonicalize(&module).unwrap_or(module);
        if let Ok(meta) = std::fs::metadata(&resolved) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default();
            parts += &format!(
                ":{}:{}:{}",
                resolved.display(),
                meta.len(),
                mtime.as_nanos()
            );
        }
    }
    parts
}

impl PluginDirs {
    pub fn new(host: Arc<PluginHost>, dirs: Vec<PathBuf>) -> Arc<Self> {
        Arc::new(PluginDirs {
            host,
            dirs,
            seen: Mutex::new(HashMap::new()),
            plugins: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn host(&self) -> &Arc<PluginHost> {
        &self.host
    }

    /// Scans now, then every second, until the task is dropped.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SCAN_INTERVAL);
            loop {
                tick.tick().await;
                let m = Arc::clone(&me);
                let _ = tokio::task::spawn_blocking(move || m.scan()).await;
            }
        })
    }

    /// Loads new and changed bundles and stops removed ones.
    pub fn scan(&self) {
        let present: Vec<PathBuf> = self.dirs.iter().flat_map(|d| bundle_dirs(d)).collect();
        // Removed bundles.
        let gone: Vec<(PathBuf, Option<String>)> = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<PathBuf> = seen
                .keys()
                .filter(|d| !present.contains(d))
                .cloned()
                .collect();
            gone.into_iter()
                .map(|d| {
                    let running = seen.remove(&d).and_then(|s| s.running);
                    (d, running)
                })
                .collect()
        };
        for (dir, running) in gone {
            if let Some(name) = running {
                tracing::info!(plugin = %name, dir = %dir.display(), "bundle removed; plugin stopped");
                self.host.stop(&name);
                self.plugins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
        }
        for dir in present {
            let fp = fingerprint(&dir);
            let previous = {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                match seen.get(&dir) {
                    Some(s) if s.fingerprint == fp => continue,
                    Some(s) => s.running.clone(),
                    None => None,
                }
            };
            let outcome = self.load(&dir, previous.as_deref());
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let entry = seen.entry(dir.clone()).or_insert(Seen {
                fingerprint: String::new(),
                running: None,
                refused: None,
            });
            entry.fingerprint = fp;
            match outcome {
                Ok(name) => {
                    entry.running = Some(name);
                    entry.refused = None;
                }
                Err((label, e)) => {
                    tracing::error!(bundle = %dir.display(), kind = e.kind(), "bundle refused: {e}");
                    self.host
                        .host
                        .self_metrics
                        .errors
                        .with_label_values(&[&label, e.kind()])
                        .inc();
                    if let Some(name) = &entry.running {
                        if let Some(s) = self
                            .plugins
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(name)
                        {
                            s.lock().unwrap_or_else(|e| e.into_inner()).last_error =
                                Some(format!("new version refused: {e}"));
                        }
                    }
                    entry.refused = Some((label, e.to_string()));
                }
            }
        }
    }

    /// Loads one bundle; on success returns the plugin's name, on failure the label to count
    /// the error under (the plugin's name, or the folder's when the manifest is unreadable).
    fn load(&self, dir: &Path, previous: Option<&str>) -> Result<String, (String, BundleError)> {
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let bundle = Bundle::read(dir).map_err(|e| (folder.clone(), e))?;
        let name = bundle.manifest.metadata.name.clone();
        // Another folder's plugin of the same name keeps its name.
        let taken = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.iter()
                .any(|(d, s)| d != dir && s.running.as_deref() == Some(name.as_str()))
        };
        if taken {
            return Err((
                name.clone(),
                BundleError::Manifest(format!(
                    "metadata.name: another bundle already runs plugin {name}"
                )),
            ));
        }
        let status = self.host.start(bundle).map_err(|e| (name.clone(), e))?;
        if let Some(old) = previous.filter(|old| *old != name) {
            self.host.stop(old);
            self.plugins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(old);
        }
        tracing::info!(plugin = %name, dir = %dir.display(), "plugin loaded");
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), status);
        Ok(name)
    }

    /// Every plugin and every refused bundle, for /api/v1/plugins.
    pub fn status(&self) -> Vec<PluginStatus> {
        let mut out: Vec<PluginStatus> = self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (dir, s) in seen.iter() {
            if let (None, Some((label, error))) = (&s.running, &s.refused) {
                out.push(PluginStatus {
                    name: label.clone(),
                    version: String::new(),
                    dir: dir.display().to_string(),
                    state: "refused".into(),
                    subscribe: Vec::new(),
                    capabilities: Vec::new(),
                    last_error: Some(error.clone()),
                });
            }
        }
        out
    }
}
