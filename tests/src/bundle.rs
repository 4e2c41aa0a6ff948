//! Plugin bundles for the tests: components built for wasm32-wasip2 (by `tests/run`) written
//! into bundle folders with a manifest.

use std::path::{Path, PathBuf};

/// The `target/` folder the test executable is in.
pub(crate) fn target_dir() -> PathBuf {
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
    built_bundle(name).unwrap_or_else(|| {
        panic!(
            "{} is missing: run `cargo xtask plugins`",
            target_dir().join("bundles").join(name).display()
        )
    })
}

/// [`first_party_bundle`], `None` when `cargo xtask plugins` has not built it.
pub fn built_bundle(name: &str) -> Option<PathBuf> {
    let dir = target_dir().join("bundles").join(name);
    dir.join("plugin.yaml").exists().then_some(dir)
}

/// Copies the files of bundle folder `from` into `to` (made if missing).
pub fn copy_bundle(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
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

/// A copy of component `component` that also instantiates core module `module` `count`
/// times when it is instantiated: a component section of core modules and one of core
/// instances appended to the component's binary. Hostile bundles made this way hold many
/// linear memories or large tables beside the plugin's own, all of which its memory budget
/// must cover.
pub fn with_core_instances(component: &[u8], module: &[u8], count: u32) -> Vec<u8> {
    assert_eq!(
        component.get(..8),
        Some(&b"\0asm\x0d\0\x01\0"[..]),
        "not a component"
    );
    // The appended module's index: the core modules the component defines at top level
    // (section 1, one module each).
    let mut modules = 0;
    let mut at = 8;
    while at < component.len() {
        let id = component[at];
        let (size, len) = read_leb(&component[at + 1..]);
        if id == 1 {
            modules += 1;
        }
        at += 1 + len + size as usize;
    }
    let mut out = component.to_vec();
    section(&mut out, 1, module);
    let mut instances = leb(count);
    for _ in 0..count {
        instances.push(0x00); // instantiate
        instances.extend(leb(modules));
        instances.push(0x00); // with no arguments
    }
    section(&mut out, 2, &instances);
    out
}

/// A core module holding one linear memory of `pages` 64 KiB pages.
pub fn core_module_with_memory(pages: u32) -> Vec<u8> {
    let mut limits = vec![0x01, 0x00];
    limits.extend(leb(pages));
    core_module(5, &limits)
}

/// A core module holding one table of `elements` function references.
pub fn core_module_with_table(elements: u32) -> Vec<u8> {
    let mut table = vec![0x01, 0x70, 0x00];
    table.extend(leb(elements));
    core_module(4, &table)
}

fn core_module(section_id: u8, contents: &[u8]) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(&mut m, section_id, contents);
    m
}

fn section(out: &mut Vec<u8>, id: u8, contents: &[u8]) {
    out.push(id);
    out.extend(leb(contents.len() as u32));
    out.extend_from_slice(contents);
}

fn leb(mut n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// An unsigned LEB128 number and how many bytes it took.
fn read_leb(bytes: &[u8]) -> (u64, usize) {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    panic!("a malformed LEB128 number")
}
