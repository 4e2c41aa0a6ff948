//! Plugin bundles for the tests: components built for wasm32-wasip2 (by `tests/run`) written
//! into bundle folders with a manifest.

use std::path::{Path, PathBuf};

/// The `target/` folder the test executable is in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("test executable {} is not under target/", exe.display()))
}

/// The component cargo built for `crate_name` (`target/wasm32-wasip2/release/<name>.wasm`,
/// with dashes as underscores).
pub fn wasm_module(crate_name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} does not exist: build it with `cargo build --release --target wasm32-wasip2 -p {crate_name}` \
         (tests/run does)",
        path.display()
    );
    path
}

/// The bundles built by `cargo xtask plugins` (`target/bundles/<name>/`).
pub fn first_party_bundle(name: &str) -> PathBuf {
    let dir = target_dir().join("bundles").join(name);
    assert!(
        dir.join("plugin.yaml").exists(),
        "{} is missing: run `cargo xtask plugins`",
        dir.display()
    );
    dir
}

/// Writes a bundle: `dir/plugin.yaml` naming `module` (copied beside it) with `spec` (YAML
/// lines indented under `spec:`, without `module`).
pub fn write_bundle(dir: &Path, name: &str, module: &Path, spec: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let file = module.file_name().expect("a module file name");
    std::fs::copy(module, dir.join(file))
        .unwrap_or_else(|e| panic!("copy {}: {e}", module.display()));
    let manifest = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  module: {}\n{spec}",
        file.to_string_lossy()
    );
    std::fs::write(dir.join("plugin.yaml"), manifest)
        .unwrap_or_else(|e| panic!("write manifest: {e}"));
}

/// Writes a script bundle: `dir/plugin.yaml` of `kind: Script` naming `script.rhai` (written
/// beside it with `source`) and `spec` (YAML lines indented under `spec:`, without `source`).
pub fn write_script_bundle(dir: &Path, name: &str, source: &str, spec: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::fs::write(dir.join("script.rhai"), source).unwrap_or_else(|e| panic!("write script: {e}"));
    let manifest = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Script\nmetadata:\n  name: {name}\nspec:\n  source: script.rhai\n{spec}"
    );
    std::fs::write(dir.join("plugin.yaml"), manifest)
        .unwrap_or_else(|e| panic!("write manifest: {e}"));
}
