//! Plugin directories and bundle ConfigMaps: every bundle under the directories is loaded,
//! and the directories are watched so that added, changed and removed bundles take effect
//! while the agent runs. A directory can be a bundle itself or hold one bundle per
//! subdirectory; the layout kubelet makes for a mounted ConfigMap (files that are symlinks into
//! `..data`, itself a symlink swapped atomically) works because bundles are read through their
//! links, and `..`-prefixed entries are skipped. ConfigMaps labelled `sonde.dev/bundle` that
//! the API watch ([`PluginDirs::spawn_configmaps`]) sees are bundles too, named
//! `configmap/<namespace>/<name>`: both kinds go through the same [`PluginDirs::scan`], so
//! loading, refusing (the running version stays) and swapping are one code path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use k8s_openapi::api::core::v1::ConfigMap;

use super::bundle::{sha256_hex, Bundle, BundleError};
use super::{PluginHost, PluginStatus};

/// Why the plugins hold readiness (`/readyz` says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("bundles not scanned yet")]
    NotScanned,
    /// The directories of bundles present at start that have not loaded (nor been refused).
    #[error("{} bundle(s) present at start still loading: {}", .0.len(), .0.join(", "))]
    Loading(Vec<String>),
}

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
    /// Bundle ConfigMaps the API watch sees now, by `configmap/<namespace>/<name>`.
    configmaps: Mutex<BTreeMap<PathBuf, ConfigMapBundle>>,
    /// One scan at a time (the directory tick and the ConfigMap watch both scan).
    scanning: Mutex<()>,
    seen: Mutex<HashMap<PathBuf, Seen>>,
    /// Bundles being loaded, each on its own thread, and the plugin name each claims once its
    /// manifest is read: a bundle is loaded by one thread at a time, and a name by one bundle.
    loading: Mutex<HashMap<PathBuf, Option<String>>>,
    /// The loads the first scan started: the agent is ready once it has scanned and none is
    /// left.
    first: Mutex<FirstLoads>,
    plugins: Mutex<BTreeMap<String, Arc<Mutex<PluginStatus>>>>,
}

/// What the first scan started.
#[derive(Default)]
struct FirstLoads {
    scanned: bool,
    /// The bundles it started loading that have not finished.
    left: HashSet<PathBuf>,
}

/// A bundle ConfigMap's keys (`data` and `binaryData` together) and their fingerprint.
#[derive(Clone)]
struct ConfigMapBundle {
    files: Arc<BTreeMap<String, Vec<u8>>>,
    fingerprint: String,
}

impl ConfigMapBundle {
    fn new(cm: &ConfigMap) -> ConfigMapBundle {
        let files = super::configmap::files(cm);
        let mut all = Vec::new();
        for (k, v) in &files {
            all.extend_from_slice(sha256_hex(k.as_bytes()).as_bytes());
            all.extend_from_slice(sha256_hex(v).as_bytes());
        }
        ConfigMapBundle {
            fingerprint: sha256_hex(&all),
            files: Arc::new(files),
        }
    }
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
            configmaps: Mutex::new(BTreeMap::new()),
            scanning: Mutex::new(()),
            seen: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            first: Mutex::new(FirstLoads::default()),
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

    /// Follows the bundle ConfigMaps (labelled `sonde.dev/bundle`) of `namespace` through the
    /// API until the task is dropped: each change is scanned at once. A watch that fails
    /// resumes or lists again with backoff; a relist replaces the whole set.
    pub fn spawn_configmaps(
        self: &Arc<Self>,
        client: kube::Client,
        namespace: &str,
    ) -> tokio::task::JoinHandle<()> {
        use futures_util::StreamExt;
        use kube::runtime::watcher::{self, Event};
        use kube::runtime::WatchStreamExt;
        let me = Arc::clone(self);
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(super::configmap::BUNDLE_LABEL);
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            let mut listing = BTreeMap::new();
            while let Some(item) = stream.next().await {
                {
                    let mut current = me.configmaps.lock().unwrap_or_else(|e| e.into_inner());
                    match item {
                        Ok(Event::Init) => {
                            listing.clear();
                            continue;
                        }
                        Ok(Event::InitApply(cm)) => {
                            listing
                                .insert(super::configmap::origin(&cm), ConfigMapBundle::new(&cm));
                            continue;
                        }
                        Ok(Event::InitDone) => *current = std::mem::take(&mut listing),
                        Ok(Event::Apply(cm)) => {
                            current
                                .insert(super::configmap::origin(&cm), ConfigMapBundle::new(&cm));
                        }
                        Ok(Event::Delete(cm)) => {
                            current.remove(&super::configmap::origin(&cm));
                        }
                        Err(e) => {
                            tracing::warn!(%namespace, error = %e, "bundle ConfigMap watch failed; retrying with backoff");
                            continue;
                        }
                    }
                }
                let m = Arc::clone(&me);
                let _ = tokio::task::spawn_blocking(move || m.scan()).await;
            }
        })
    }

    /// Stops removed bundles and starts loading new and changed ones, each on a thread of its
    /// own: a bundle that is slow to compile or initialise delays no other, and the caller
    /// (the HTTP server's runtime, the ConfigMap watch) never waits for one.
    pub fn scan(self: &Arc<Self>) {
        let _one = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        let configmaps = self
            .configmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut present: Vec<PathBuf> = self.dirs.iter().flat_map(|d| bundle_dirs(d)).collect();
        present.extend(configmaps.keys().cloned());
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
        let is_first = !self.first.lock().unwrap_or_else(|e| e.into_inner()).scanned;
        for dir in present {
            if self
                .loading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&dir)
            {
                // Looked at again once this load ends.
                continue;
            }
            let from_api = configmaps.get(&dir).cloned();
            let fp = match &from_api {
                Some(cm) => cm.fingerprint.clone(),
                None => fingerprint(&dir),
            };
            let previous = {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                match seen.get(&dir) {
                    Some(s) if s.fingerprint == fp => continue,
                    Some(s) => s.running.clone(),
                    None => None,
                }
            };
            self.loading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dir.clone(), None);
            if is_first {
                self.first
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .left
                    .insert(dir.clone());
            }
            let me = Arc::clone(self);
            let job = dir.clone();
            let spawned = std::thread::Builder::new()
                .name("bundle load".into())
                .spawn(move || me.load_dir(job, fp, from_api, previous));
            if let Err(e) = spawned {
                tracing::error!(bundle = %dir.display(), error = %e, "cannot start a thread to load the bundle; trying at the next scan");
                self.loaded(&dir);
            }
        }
        self.first.lock().unwrap_or_else(|e| e.into_inner()).scanned = true;
    }

    /// A load ended (or never started): the bundle may be looked at again.
    fn loaded(&self, dir: &Path) {
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir);
        self.first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .left
            .remove(dir);
    }

    /// Whether the bundles present at start have loaded (or been refused): until then the
    /// agent is not ready, so that its first scrape has their metrics.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        match &*first {
            FirstLoads { scanned: false, .. } => Err(NotReady::NotScanned),
            FirstLoads { left, .. } if !left.is_empty() => {
                let mut dirs: Vec<String> = left.iter().map(|d| d.display().to_string()).collect();
                dirs.sort();
                Err(NotReady::Loading(dirs))
            }
            _ => Ok(()),
        }
    }

    /// Loads one bundle (on its own thread) and records the outcome.
    fn load_dir(
        &self,
        dir: PathBuf,
        fp: String,
        from_api: Option<ConfigMapBundle>,
        previous: Option<String>,
    ) {
        let bundle = match &from_api {
            Some(cm) => Bundle::from_files(&dir, &cm.files),
            None => Bundle::read(&dir),
        };
        let outcome = self.load(&dir, bundle, previous.as_deref());
        {
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
        self.loaded(&dir);
    }

    /// Loads one bundle; on success returns the plugin's name, on failure the label to count
    /// the error under (the plugin's name, or the folder's when the manifest is unreadable).
    fn load(
        &self,
        dir: &Path,
        bundle: Result<Bundle, BundleError>,
        previous: Option<&str>,
    ) -> Result<String, (String, BundleError)> {
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let bundle = bundle.map_err(|e| (folder.clone(), e))?;
        let name = bundle.manifest.metadata.name.clone();
        // Another folder's plugin of the same name keeps its name, whether it runs or is
        // being loaded.
        let taken = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            let taken = seen
                .iter()
                .any(|(d, s)| d != dir && s.running.as_deref() == Some(name.as_str()))
                || loading
                    .iter()
                    .any(|(d, n)| d != dir && n.as_deref() == Some(name.as_str()));
            if !taken {
                loading.insert(dir.to_path_buf(), Some(name.clone()));
            }
            taken
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
            .map(|s| {
                let mut status = s.lock().unwrap_or_else(|e| e.into_inner()).clone();
                status.last_refusal = self.host.host.last_refusal(&status.name);
                status
            })
            .collect();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        for (dir, name) in loading.iter() {
            // A new bundle (a new version of a running one shows as that plugin meanwhile).
            if seen.get(dir).is_some_and(|s| s.running.is_some()) {
                continue;
            }
            let folder = dir.file_name().map(|n| n.to_string_lossy().to_string());
            out.push(PluginStatus {
                name: name.clone().or(folder).unwrap_or_default(),
                version: String::new(),
                dir: dir.display().to_string(),
                state: "loading".into(),
                subscribe: Vec::new(),
                capabilities: Vec::new(),
                wit: None,
                last_error: None,
                last_refusal: None,
            });
        }
        for (dir, s) in seen.iter() {
            if loading.contains_key(dir) {
                continue;
            }
            if let (None, Some((label, error))) = (&s.running, &s.refused) {
                out.push(PluginStatus {
                    name: label.clone(),
                    version: String::new(),
                    dir: dir.display().to_string(),
                    state: "refused".into(),
                    subscribe: Vec::new(),
                    capabilities: Vec::new(),
                    wit: None,
                    last_error: Some(error.clone()),
                    last_refusal: None,
                });
            }
        }
        out
    }
}
