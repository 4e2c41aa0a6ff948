//! A bundle as a Kubernetes ConfigMap (k8s-openapi's type, serialized as YAML): `plugin.yaml`
//! (and a script's source) in `data`, a component in `binaryData` (base64), labelled `sonde.dev/bundle` so the agent finds it. Mounted as
//! a volume, the ConfigMap's keys are the bundle folder's files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::bundle::{Bundle, BundleError};
use super::manifest::BundleKind;
use super::ModuleError;

/// What Kubernetes stores at most in one ConfigMap (etcd's object limit).
pub const CONFIGMAP_LIMIT: usize = 1 << 20;
/// The label bundles carry.
pub const BUNDLE_LABEL: &str = "sonde.dev/bundle";

/// The name a bundle ConfigMap from the API goes by, in errors and status:
/// `configmap/<namespace>/<name>`.
pub fn origin(cm: &ConfigMap) -> PathBuf {
    PathBuf::from(format!(
        "configmap/{}/{}",
        cm.metadata.namespace.as_deref().unwrap_or_default(),
        cm.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// A bundle ConfigMap's files as the agent reads them from the API: the keys of `data` and
/// `binaryData` together (a key in both: `binaryData`'s, which the API server refuses anyway).
pub fn files(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for (k, v) in cm.data.iter().flatten() {
        files.insert(k.clone(), v.clone().into_bytes());
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        files.insert(k.clone(), v.0.clone());
    }
    files
}

/// The bundle a ConfigMap from the API holds, or why not (naming [`origin`] and the key).
pub fn bundle(cm: &ConfigMap) -> Result<Bundle, BundleError> {
    Bundle::from_files(&origin(cm), &files(cm))
}

/// The ConfigMap YAML of a bundle, in `namespace` if given; an error when it would not fit in
/// a ConfigMap, with the way out.
pub fn configmap_yaml(bundle: &Bundle, namespace: Option<&str>) -> Result<String, BundleError> {
    let manifest_path = bundle.dir.join(Bundle::MANIFEST);
    let manifest = std::fs::read_to_string(&manifest_path).map_err(|e| {
        BundleError::Manifest(format!("{}: cannot read: {e}", manifest_path.display()))
    })?;
    let name = &bundle.manifest.metadata.name;
    let file = bundle.manifest.file().to_string();
    let mut data = BTreeMap::from([(Bundle::MANIFEST.to_string(), manifest)]);
    let mut binary_data = BTreeMap::new();
    match (
        bundle.manifest.bundle_kind(),
        std::str::from_utf8(&bundle.module),
    ) {
        (Some(BundleKind::Script), Ok(source)) => {
            data.insert(file, source.to_string());
        }
        _ => {
            binary_data.insert(file, ByteString(bundle.module.clone()));
        }
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("sonde-bundle-{name}")),
            namespace: namespace.map(String::from),
            labels: Some(BTreeMap::from([(BUNDLE_LABEL.to_string(), name.clone())])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        binary_data: (!binary_data.is_empty()).then_some(binary_data),
        ..ConfigMap::default()
    };
    let yaml = serde_yaml_ng::to_string(&cm).map_err(|e| ModuleError::ConfigMap {
        dir: bundle.dir.display().to_string(),
        why: e.to_string(),
    })?;
    if yaml.len() > CONFIGMAP_LIMIT {
        return Err(ModuleError::ConfigMapTooLarge {
            dir: bundle.dir.display().to_string(),
            mib: yaml.len() as f64 / f64::from(1 << 20),
        }
        .into());
    }
    Ok(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_dir(kind: &str, file: &str, module: &[u8]) -> (std::path::PathBuf, Bundle) {
        let dir = std::env::temp_dir().join(format!(
            "sonde-configmap-{}-{kind}-{}",
            std::process::id(),
            module.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let field = if kind == "Script" { "source" } else { "module" };
        std::fs::write(
            dir.join("plugin.yaml"),
            format!(
                "apiVersion: sonde.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: demo\nspec:\n  \
                 {field}: {file}\n  subscribe: [packet_drop]\n  config:\n    text: |\n      two\n\n      lines\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join(file), module).unwrap();
        let b = Bundle::read(&dir).unwrap();
        (dir, b)
    }

    #[test]
    fn a_configmap_holds_the_bundle_and_parses_back() {
        let module = [0u8, 97, 115, 109, 255, 1, 2];
        let (dir, b) = bundle_dir("Plugin", "demo.wasm", &module);
        let yaml = configmap_yaml(&b, Some("sonde")).unwrap();
        let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(cm["kind"], "ConfigMap");
        assert_eq!(cm["metadata"]["name"], "sonde-bundle-demo");
        assert_eq!(cm["metadata"]["namespace"], "sonde");
        assert_eq!(cm["metadata"]["labels"][BUNDLE_LABEL], "demo");
        let manifest = std::fs::read_to_string(dir.join("plugin.yaml")).unwrap();
        assert_eq!(cm["data"]["plugin.yaml"].as_str(), Some(manifest.as_str()));
        use base64::Engine as _;
        assert_eq!(
            cm["binaryData"]["demo.wasm"].as_str(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode(module)
                    .as_str()
            )
        );
        // What the agent makes of it when the API watch delivers it.
        let mut api: ConfigMap = serde_yaml_ng::from_str(&yaml).unwrap();
        let back = bundle(&api).unwrap();
        assert_eq!(back.dir, PathBuf::from("configmap/sonde/sonde-bundle-demo"));
        assert_eq!(back.manifest.metadata.name, "demo");
        assert_eq!(back.module, module);
        assert_eq!(back.sha256, b.sha256);
        api.binary_data = None;
        let e = bundle(&api).unwrap_err().to_string();
        assert!(
            e.contains("configmap/sonde/sonde-bundle-demo/demo.wasm (spec.module)"),
            "{e}"
        );

        let (dir2, s) = bundle_dir(
            "Script",
            "demo.rhai",
            b"fn on_packet_drop(e) {\n  count(\"n\");\n}\n",
        );
        let cm: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&configmap_yaml(&s, None).unwrap()).unwrap();
        assert_eq!(
            cm["data"]["demo.rhai"].as_str(),
            Some("fn on_packet_drop(e) {\n  count(\"n\");\n}\n")
        );
        assert!(cm.get("binaryData").is_none());
        assert!(cm["metadata"].get("namespace").is_none());
        for d in [dir, dir2] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn a_bundle_over_a_mebibyte_is_refused_with_the_way_out() {
        let (dir, b) = bundle_dir("Plugin", "big.wasm", &vec![7u8; 800 << 10]);
        let e = configmap_yaml(&b, None).unwrap_err().to_string();
        assert!(
            e.contains("over Kubernetes' 1 MiB limit") && e.contains("hostPath"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
