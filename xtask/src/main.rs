//! `cargo xtask`: developer chores that need more than cargo.
//!
//! `cargo xtask manifests [--check]` renders the Helm chart into `deploy/manifests/` (see
//! `manifests.rs`) with Helm itself, helm-python-sdk in a virtualenv at `target/helm-venv`
//! (see `helm.rs`).
//!
//! `cargo xtask kernels [--check] [--only NAME]...` runs the kernel matrix (see `kernels.rs`)
//! and writes `docs/kernels.md`.
//!
//! `cargo xtask plugins [--out DIR] [--only NAME]...` builds every first-party plugin (the
//! folders under `plugins/` with a `plugin.yaml`) into a bundle `DIR/<name>/` (default
//! `target/bundles`): the manifest, with `spec.sha256` filled in, and the module it names. A
//! Rust plugin (a `Cargo.toml`) is built for wasm32-wasip2 with the `plugin` profile; any
//! other plugin provides `build.sh`, run as `bash build.sh OUT_DIR` from its folder, which must
//! write the module (named as `spec.module`) into OUT_DIR. A folder with neither is skipped.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use sha2::{Digest, Sha256};

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";
const USAGE: &str = "usage: cargo xtask plugins [--out DIR] [--only NAME]... | \
     cargo xtask manifests [--check] | cargo xtask kernels [--check] [--only NAME]...";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("plugins") => plugins(args.collect()),
        Some("manifests") => {
            let root = root();
            let venv = target_dir(&root)?.join("helm-venv");
            xtask::manifests::run(&root, &venv, args.collect())
        }
        Some("kernels") => {
            let root = root();
            let target = target_dir(&root)?;
            xtask::kernels::run(&root, &target, args.collect())
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}; {USAGE}")),
        None => Err(USAGE.into()),
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn plugins(args: Vec<String>) -> Result<(), String> {
    let mut out = None;
    let mut only = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--only" => only.push(value("--only")?),
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}")),
        }
    }
    let root = root();
    let target = target_dir(&root)?;
    let out = out.unwrap_or_else(|| target.join("bundles"));
    // build.sh output goes here, not under `out`, where an agent may be watching for bundles.
    let scratch = target.join("xtask");

    let found = discover(&root.join("plugins"))?;
    for name in &only {
        if !found
            .iter()
            .any(|p| p.file_name().is_some_and(|f| f == name.as_str()))
        {
            return Err(format!("--only {name}: no plugins/{name}/plugin.yaml"));
        }
    }
    let selected = found.into_iter().filter(|p| {
        only.is_empty()
            || only
                .iter()
                .any(|n| p.file_name().is_some_and(|f| f == n.as_str()))
    });
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    // Build every plugin even when one fails, so one broken toolchain hides nothing else.
    let mut failed = Vec::new();
    for dir in selected {
        if let Err(e) = bundle(&root, &dir, &out, &scratch) {
            eprintln!("xtask: {e}");
            failed.push(
                dir.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("plugins failed to build: {}", failed.join(", ")))
    }
}

/// Folders under `plugins/` that hold a `plugin.yaml`, by name.
fn discover(plugins: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        fs::read_dir(plugins).map_err(|e| format!("cannot read {}: {e}", plugins.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("plugin.yaml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Builds the plugin in `dir` and writes its bundle under `out`.
fn bundle(root: &Path, dir: &Path, out: &Path, scratch: &Path) -> Result<(), String> {
    let folder = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let manifest_path = dir.join("plugin.yaml");
    let manifest = fs::read_to_string(&manifest_path)
        .map_err(|e| format!("{folder}: cannot read plugin.yaml: {e}"))?;
    let (name, module_name) =
        names(&manifest).map_err(|e| format!("{folder}: plugin.yaml: {e}"))?;

    let bundle_dir = out.join(&name);
    let module = if dir.join("Cargo.toml").is_file() {
        fs::read(build_rust(root, dir, &name)?)
            .map_err(|e| format!("{name}: cannot read the built module: {e}"))?
    } else if dir.join("build.sh").is_file() {
        let build_dir = scratch.join(&name);
        let module = build_script(dir, &name, &build_dir, &module_name);
        let _ = fs::remove_dir_all(&build_dir);
        module?
    } else {
        eprintln!("xtask: skipping {folder}: it has neither Cargo.toml nor build.sh");
        return Ok(());
    };

    let sha256 = hex(&Sha256::digest(&module));
    let manifest =
        with_sha256(&manifest, &sha256).map_err(|e| format!("{name}: plugin.yaml: {e}"))?;
    let write = || -> std::io::Result<()> {
        if bundle_dir.exists() {
            fs::remove_dir_all(&bundle_dir)?;
        }
        fs::create_dir_all(&bundle_dir)?;
        fs::write(bundle_dir.join(&module_name), &module)?;
        fs::write(bundle_dir.join("plugin.yaml"), manifest)
    };
    write().map_err(|e| format!("{name}: cannot write {}: {e}", bundle_dir.display()))?;
    println!(
        "{name:<18} {:<40} {module_name} {:.1} KiB, sha256 {}",
        shown(root, &bundle_dir),
        module.len() as f64 / 1024.0,
        &sha256[..12]
    );
    Ok(())
}

/// `metadata.name` and `spec.module` of a manifest.
fn names(manifest: &str) -> Result<(String, String), String> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(manifest).map_err(|e| e.to_string().replace('\n', " "))?;
    let text = |v: &serde_yaml_ng::Value, field: &str| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{field} is missing or not a string"))
    };
    let name = text(&doc["metadata"]["name"], "metadata.name")?;
    let module = text(&doc["spec"]["module"], "spec.module")?;
    if module.is_empty() || module.contains('/') || module.starts_with('.') {
        return Err(format!("spec.module: {module:?} must be a file name"));
    }
    Ok((name, module))
}

/// The manifest with `spec.sha256` set: a `sha256:` line beside `module:` when the manifest
/// is laid out as usual (keeping its comments), else the manifest re-serialized.
fn with_sha256(manifest: &str, sha256: &str) -> Result<String, String> {
    let check = |text: &str| {
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            .ok()
            .is_some_and(|d| d["spec"]["sha256"].as_str() == Some(sha256))
    };
    let mut lines: Vec<String> = Vec::new();
    let mut inserted = false;
    let mut indent = None;
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        let pad = &line[..line.len() - trimmed.len()];
        if indent.as_deref() == Some(pad) && trimmed.starts_with("sha256:") {
            continue; // replaced by the line written after `module:`
        }
        lines.push(line.to_string());
        if !inserted && !pad.is_empty() && trimmed.starts_with("module:") {
            lines.push(format!("{pad}sha256: {sha256}"));
            indent = Some(pad.to_string());
            inserted = true;
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    if inserted && check(&text) {
        return Ok(text);
    }
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(manifest).map_err(|e| e.to_string().replace('\n', " "))?;
    let spec = doc["spec"]
        .as_mapping_mut()
        .ok_or("spec is missing or not a mapping")?;
    spec.insert("sha256".into(), sha256.into());
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    if check(&text) {
        Ok(text)
    } else {
        Err("cannot set spec.sha256".into())
    }
}

/// Builds a Rust plugin; returns the path of its component.
fn build_rust(root: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    check_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = dir.join("Cargo.toml");
    let mut child = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--quiet", "--profile", PROFILE, "--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: cannot run {cargo}: {e}"))?;
    let mut module = None;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        let ours = msg["manifest_path"].as_str().is_some_and(|p| {
            Path::new(p) == manifest || fs::canonicalize(p).ok() == fs::canonicalize(&manifest).ok()
        });
        if msg["reason"] == "compiler-artifact" && cdylib && ours {
            module = msg["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from);
        }
    }
    let status = child.wait().map_err(|e| format!("{name}: {e}"))?;
    if !status.success() {
        return Err(format!("{name}: cargo build failed ({status})"));
    }
    module.ok_or_else(|| format!("{name}: cargo built no .wasm (is the crate a cdylib?)"))
}

/// Fails early, with the fix, when the wasm32-wasip2 standard library is not installed.
fn check_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !Path::new(&libdir).is_dir() {
        return Err(format!(
            "the {TARGET} target is not installed: run `rustup target add {TARGET}`"
        ));
    }
    Ok(())
}

/// Runs `bash build.sh OUT_DIR` in the plugin's folder; returns the module it wrote.
fn build_script(dir: &Path, name: &str, build_dir: &Path, module: &str) -> Result<Vec<u8>, String> {
    let _ = fs::remove_dir_all(build_dir);
    fs::create_dir_all(build_dir)
        .map_err(|e| format!("{name}: cannot create {}: {e}", build_dir.display()))?;
    let build_dir = fs::canonicalize(build_dir).map_err(|e| format!("{name}: {e}"))?;
    eprintln!("xtask: building {name} with build.sh");
    let output = Command::new("bash")
        .arg("build.sh")
        .arg(&build_dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{name}: cannot run bash: {e}"))?;
    if !output.status.success() {
        // Show what the script said; its last line of errors becomes the one-line reason.
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut lines: Vec<&str> = stderr.lines().collect();
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        let last = lines.pop().unwrap_or("no output").trim();
        for line in lines {
            eprintln!("{line}");
        }
        return Err(format!(
            "{name}: build.sh failed ({}): {last}",
            output.status
        ));
    }
    fs::read(build_dir.join(module))
        .map_err(|e| format!("{name}: build.sh wrote no {module} into OUT_DIR: {e}"))
}

/// The workspace's target directory, as cargo resolves it.
fn target_dir(root: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed ({})", out.status));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata gave no target_directory".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `path` relative to the workspace root when it is inside it.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "apiVersion: sonde.dev/v1alpha1\nkind: Plugin\nmetadata:\n  name: demo\n\
        spec:\n  # the component\n  module: demo.wasm\n  sha256: 00\n  subscribe: [tcp_retrans]\n";

    #[test]
    fn sha256_goes_beside_module_keeping_comments() {
        let sum = "ab".repeat(32);
        let text = with_sha256(MANIFEST, &sum).unwrap();
        assert!(
            text.contains(&format!(
                "  module: demo.wasm\n  sha256: {sum}\n  subscribe"
            )),
            "{text}"
        );
        assert!(text.contains("# the component"));
        assert_eq!(text.matches("sha256:").count(), 1);
        assert_eq!(
            names(&text).unwrap(),
            ("demo".to_string(), "demo.wasm".to_string())
        );
    }

    #[test]
    fn sha256_in_a_flow_mapping_is_set_by_reserializing() {
        let sum = "cd".repeat(32);
        let flow = "apiVersion: sonde.dev/v1alpha1\nkind: Plugin\nmetadata: {name: demo}\nspec: {module: demo.wasm}\n";
        let text = with_sha256(flow, &sum).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["spec"]["sha256"].as_str(), Some(sum.as_str()));
        assert_eq!(doc["spec"]["module"].as_str(), Some("demo.wasm"));
    }

    #[test]
    fn bad_manifests_name_the_field() {
        assert!(names("metadata: {name: x}\nspec: {}\n")
            .unwrap_err()
            .contains("spec.module"));
        assert!(names("spec: {module: x.wasm}\n")
            .unwrap_err()
            .contains("metadata.name"));
        assert!(names("metadata: {name: x}\nspec: {module: ../x.wasm}\n")
            .unwrap_err()
            .contains("spec.module"));
        assert_eq!(hex(&[0, 1, 0xff]), "0001ff");
    }
}
