//! Helm itself, for `cargo xtask manifests` and the tests: Helm v4's Go SDK through the PyPI
//! package helm-python-sdk (no helm binary, no cluster), driven by the scripts in `xtask/helm/`
//! (`render.py` renders as `helm template` does, `lint.py` lints as `helm lint --strict` does
//! and fails on any warning).
//!
//! The package lives in a virtualenv (by default `target/helm-venv`), created on first use
//! with `python3 -m venv` and pip, pinned by `xtask/helm/requirements.txt`, and created again
//! when that file changes. Creating it needs python3 (3.10 or later) with its venv module, and
//! PyPI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The scripts, relative to the workspace root.
pub const SCRIPTS: &str = "xtask/helm";
/// The pinned packages, relative to the workspace root.
pub const REQUIREMENTS: &str = "xtask/helm/requirements.txt";
/// In the virtualenv: the requirements it was made from.
const STAMP: &str = "sonde-requirements.txt";

/// One thread of a process creates the virtualenv; the others wait for it.
static CREATING: Mutex<()> = Mutex::new(());

/// A virtualenv with helm-python-sdk, and the scripts that use it.
#[derive(Debug, Clone)]
pub struct Helm {
    python: PathBuf,
    scripts: PathBuf,
}

/// Values overrides, merged in order over the chart's values as `helm -f` merges them.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// YAML text.
    Yaml(&'a str),
    /// A YAML file.
    File(&'a Path),
}

/// A chart rendered as `helm template` renders it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The documents in Helm's install order.
    pub documents: Vec<Document>,
    /// `templates/NOTES.txt` rendered (what `helm install` prints), or empty.
    pub notes: String,
}

/// One rendered document and the template it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// `<chart>/templates/<file>`.
    pub source: String,
    pub kind: String,
    /// The document as Helm split it (leading space trimmed).
    pub text: String,
}

impl Helm {
    /// Helm from the virtualenv `venv`, which is created (or created again, when
    /// `xtask/helm/requirements.txt` under `root` changed) first.
    pub fn new(root: &Path, venv: &Path) -> Result<Helm, String> {
        let python = ensure_venv(root, venv)?;
        Ok(Helm {
            python,
            scripts: root.join(SCRIPTS),
        })
    }

    /// The chart in `chart` rendered with `values` for release `release` in `namespace`.
    pub fn render(
        &self,
        chart: &Path,
        values: &[Values],
        release: &str,
        namespace: &str,
    ) -> Result<Rendered, String> {
        let mut cmd = self.script("render.py", chart, values, namespace);
        cmd.args(["--release", release, "--json"]);
        let out = run_script(&mut cmd, "render.py")?;
        if !out.ok {
            return Err(out.error);
        }
        let json: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("render.py printed no JSON: {e}"))?;
        let text = |v: &serde_json::Value, what: &str| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("render.py: {what} is not a string"))
        };
        let documents = json["documents"]
            .as_array()
            .ok_or("render.py: no documents")?
            .iter()
            .map(|d| {
                Ok(Document {
                    source: text(&d["source"], "source")?,
                    kind: text(&d["kind"], "kind")?,
                    text: text(&d["text"], "text")?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Rendered {
            documents,
            notes: text(&json["notes"], "notes")?,
        })
    }

    /// `helm lint --strict` on the chart with `values`: Ok with the linter's report when it
    /// found no warning and no error (Helm's own warnings while rendering count too), else Err
    /// with the report.
    pub fn lint(&self, chart: &Path, values: &[Values], namespace: &str) -> Result<String, String> {
        let mut cmd = self.script("lint.py", chart, values, namespace);
        let out = run_script(&mut cmd, "lint.py")?;
        let report = format!("{}{}", out.stdout, out.stderr);
        if out.ok {
            Ok(report)
        } else {
            Err(report)
        }
    }

    fn script(&self, name: &str, chart: &Path, values: &[Values], namespace: &str) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.scripts.join(name))
            .arg(chart)
            .args(["--namespace", namespace]);
        for v in values {
            match v {
                Values::Yaml(text) => cmd.arg("--values-yaml").arg(text),
                Values::File(path) => cmd.arg("--values").arg(path),
            };
        }
        cmd.env("PYTHONDONTWRITEBYTECODE", "1").stdin(Stdio::null());
        cmd
    }
}

/// `helm template`'s output for documents: each after `---` and a `# Source:` line, the whole
/// trimmed and ending in a newline.
pub fn stream<'a>(docs: impl IntoIterator<Item = &'a Document>) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str(&format!("---\n# Source: {}\n{}\n", d.source, d.text));
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}\n")
    }
}

struct ScriptOutput {
    ok: bool,
    stdout: String,
    stderr: String,
    /// The script's error: its last line on standard error.
    error: String,
}

fn run_script(cmd: &mut Command, name: &str) -> Result<ScriptOutput, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd.get_program().to_string_lossy()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let error = last_line(&stderr)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{name} failed ({})", out.status));
    if out.status.success() {
        // Helm's warnings (an override whose type does not match the chart's value...).
        eprint!("{stderr}");
    }
    Ok(ScriptOutput {
        ok: out.status.success(),
        stdout,
        stderr,
        error,
    })
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The virtualenv's python, after creating the virtualenv when it is missing or was made from
/// other requirements. It is built beside `venv` and renamed into place, so that a process
/// never sees half of one.
fn ensure_venv(root: &Path, venv: &Path) -> Result<PathBuf, String> {
    let req_path = root.join(REQUIREMENTS);
    let requirements =
        std::fs::read_to_string(&req_path).map_err(|e| format!("{}: {e}", req_path.display()))?;
    let python = venv.join("bin/python");
    let ready = |dir: &Path| {
        std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == requirements)
            && dir.join("bin/python").is_file()
    };
    if ready(venv) {
        return Ok(python);
    }
    let _creating = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    if ready(venv) {
        return Ok(python);
    }
    let parent = venv
        .parent()
        .ok_or_else(|| format!("{}: not a folder for a virtualenv", venv.display()))?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let name = venv.file_name().unwrap_or_default().to_string_lossy();
    let scratch = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let pins: Vec<&str> = requirements
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    eprintln!(
        "xtask: installing {} into {} (once)",
        pins.join(", "),
        venv.display()
    );
    let created = create_venv(&scratch, &req_path, &requirements);
    if let Err(e) = created {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(e);
    }
    // Another process may have put one in place meanwhile: keep the first.
    if ready(venv) {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(venv);
    if let Err(e) = std::fs::rename(&scratch, venv) {
        let _ = std::fs::remove_dir_all(&scratch);
        if !ready(venv) {
            return Err(format!(
                "cannot move the virtualenv to {}: {e}",
                venv.display()
            ));
        }
    }
    Ok(python)
}

fn create_venv(dir: &Path, req_path: &Path, requirements: &str) -> Result<(), String> {
    let step = |cmd: &mut Command, what: &str, hint: &str| -> Result<(), String> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {what}: {e}{hint}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reason = last_line(&stderr)
            .or_else(|| last_line(&stdout))
            .unwrap_or("no output");
        Err(format!("{what} failed ({}): {reason}{hint}", out.status))
    };
    step(
        Command::new("python3").args(["-m", "venv"]).arg(dir),
        "python3 -m venv",
        " (install python3 and python3-venv)",
    )?;
    step(
        Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(req_path),
        &format!("pip install -r {REQUIREMENTS}"),
        " (helm-python-sdk needs Python 3.10 or later, and PyPI)",
    )?;
    std::fs::write(dir.join(STAMP), requirements)
        .map_err(|e| format!("{}: {e}", dir.join(STAMP).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_what_helm_template_prints() {
        let doc = |source: &str, kind: &str, text: &str| Document {
            source: source.into(),
            kind: kind.into(),
            text: text.into(),
        };
        // A file's last document keeps its trailing newline, as Helm keeps it.
        let docs = [
            doc(
                "c/templates/a.yaml",
                "ServiceAccount",
                "kind: ServiceAccount\n",
            ),
            doc("c/templates/b.yaml", "Service", "kind: Service\n"),
        ];
        assert_eq!(
            stream(&docs),
            "---\n# Source: c/templates/a.yaml\nkind: ServiceAccount\n\n\
             ---\n# Source: c/templates/b.yaml\nkind: Service\n"
        );
        assert_eq!(stream(&[]), "");
        assert_eq!(last_line("a\nb  \n\n"), Some("b"));
        assert_eq!(last_line(" \n"), None);
    }
}
