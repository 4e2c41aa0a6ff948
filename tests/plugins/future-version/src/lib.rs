//! A component for `sonde:plugin@1.0.0`, a version the host does not serve: the tests check
//! that the host refuses it with one line naming both versions.

wit_bindgen::generate!({ world: "plugin", path: "wit" });

struct Future;

impl exports::sonde::plugin::handler::Guest for Future {
    fn init(config: String) -> Result<(), String> {
        sonde::plugin::log::log(&config);
        Ok(())
    }
}

export!(Future);
