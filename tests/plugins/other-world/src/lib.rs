//! A component for a world that is not `sonde:plugin/plugin`: the tests check that the host
//! refuses it with a world mismatch.

wit_bindgen::generate!({ world: "other", path: "wit" });

struct Other;

impl Guest for Other {
    fn run(input: String) -> String {
        input
    }
}

export!(Other);
