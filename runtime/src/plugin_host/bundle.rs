//! A bundle on disk: `plugin.yaml` and the module it names, read and verified.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{BundleKind, Manifest};

/// Why a bundle was refused; `kind()` is the `kind` label of `sonde_plugin_errors_total`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Manifest(String),
    #[error(transparent)]
    Module(#[from] super::ModuleError),
    #[error("{0}")]
    Checksum(String),
    #[error("component does not fit the sonde:plugin world: {0}")]
    World(String),
    #[error("init failed: {0}")]
    Init(String),
    /// Its `spec.limits.memory` does not fit in `plugins.limits.totalMemory`.
    #[error(transparent)]
    Memory(#[from] super::budget::BudgetError),
}

impl BundleError {
    pub fn kind(&self) -> &'static str {
        match self {
            BundleError::Manifest(_) => "manifest",
            BundleError::Module(_) => "module",
            BundleError::Checksum(_) => "checksum",
            BundleError::World(_) => "world",
            BundleError::Init(_) => "init",
            BundleError::Memory(_) => "manifest",
        }
    }
}

/// A bundle read from its folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The component, or the script's text.
    pub module: Vec<u8>,
    /// Hex SHA-256 of the module.
    pub sha256: String,
}

/// What the running plugin knows of its bundle.
#[derive(Debug)]
pub struct PluginInfo {
    pub name: String,
    /// `plugin:<name>`, the `source` of the events it emits.
    pub source: std::sync::Arc<str>,
    pub manifest: Manifest,
    /// Its memory budget (`spec.limits.memory`): its instance's memories, tables and host
    /// objects, and the enrichment answers kept for it.
    pub budget: std::sync::Arc<super::budget::Budget>,
}

impl PluginInfo {
    pub fn new(manifest: &Manifest) -> PluginInfo {
        let name = manifest.metadata.name.clone();
        PluginInfo {
            source: std::sync::Arc::from(format!("plugin:{name}")),
            name,
            budget: super::budget::Budget::new(manifest.spec.limits.memory.0),
            manifest: manifest.clone(),
        }
    }
}

/// Why a bundle's file could not be read, without the file's content.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FileError {
    /// cap-std's refusal of a path that escapes the directory.
    #[error(
        "leads outside the bundle's directory (through a symlink, `..` or an absolute path): \
         refused"
    )]
    Outside,
    #[error("cannot read: {0}")]
    Read(#[source] std::sync::Arc<std::io::Error>),
    #[error("no such key in the ConfigMap's data or binaryData")]
    NoKey,
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> FileError {
        if e.kind() == std::io::ErrorKind::PermissionDenied && e.to_string().contains("outside") {
            FileError::Outside
        } else {
            FileError::Read(std::sync::Arc::new(e))
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Bundle {
    pub const MANIFEST: &'static str = "plugin.yaml";

    /// Reads `DIR/plugin.yaml` and its module, checking the module's checksum when the
    /// manifest gives one. Files are opened through `cap-std` with the bundle's directory as
    /// the root: a name, or a symlink along the way, that leads outside it is refused (the
    /// links kubelet makes in a mounted ConfigMap, `key -> ..data/key`, `..data -> ..2026_...`,
    /// stay inside and work).
    pub fn read(dir: &Path) -> Result<Bundle, BundleError> {
        let root =
            cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()).map_err(|e| {
                BundleError::Manifest(format!("{}: cannot open the bundle: {e}", dir.display()))
            })?;
        Self::assemble(dir, |name| Ok(root.read(name)?))
    }

    /// A bundle from a ConfigMap's keys (`data` and `binaryData` together), named `origin`
    /// (`configmap/<namespace>/<name>`) in errors and status.
    pub fn from_files(
        origin: &Path,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<Bundle, BundleError> {
        Self::assemble(origin, |name| {
            files.get(name).cloned().ok_or(FileError::NoKey)
        })
    }

    /// Puts a bundle together, wherever its files come from: `file(name)` gives a file's
    /// bytes, or why not.
    fn assemble(
        dir: &Path,
        file: impl Fn(&str) -> Result<Vec<u8>, FileError>,
    ) -> Result<Bundle, BundleError> {
        let path = dir.join(Self::MANIFEST);
        let origin = path.display().to_string();
        let text = file(Self::MANIFEST)
            .map_err(|why| format!("{origin}: {why}"))
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| format!("{origin}: not UTF-8 text"))
            })
            .map_err(BundleError::Manifest)?;
        let manifest =
            Manifest::parse(&text, &origin).map_err(|e| BundleError::Manifest(e.to_string()))?;
        let field = match manifest.bundle_kind() {
            Some(BundleKind::Script) => "spec.source",
            _ => "spec.module",
        };
        let module_path = dir.join(manifest.file());
        let module = file(manifest.file()).map_err(|why| super::ModuleError::File {
            path: module_path.display().to_string(),
            field,
            why,
        })?;
        let sha256 = sha256_hex(&module);
        if let Some(want) = &manifest.spec.sha256 {
            if !want.eq_ignore_ascii_case(&sha256) {
                return Err(BundleError::Checksum(format!(
                    "{}: sha256 is {sha256}, spec.sha256 says {want}",
                    module_path.display()
                )));
            }
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            module,
            sha256,
        })
    }
}
