//! The parts of `cargo xtask` the tests use too: the chart renderer, Helm (rendering and
//! linting the chart) and the manifests it writes.

pub mod chart;
pub mod helm;
pub mod kernels;
pub mod manifests;
