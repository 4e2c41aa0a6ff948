//! The parts of `cargo xtask` the tests use too: Helm (rendering and linting the chart) and
//! the manifests it writes.

pub mod helm;
pub mod kernels;
pub mod manifests;
