//! The parts of `cargo xtask` the tests use too: the chart renderer and the manifests it
//! writes.

pub mod chart;
pub mod kernels;
pub mod manifests;
