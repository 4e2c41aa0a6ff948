//! Logging into the agent's log, tagged with the plugin's name (always granted; the host
//! rate-limits it). The [`debug!`](crate::debug), [`info!`](crate::info),
//! [`warn!`](crate::warn) and [`error!`](crate::error) macros take `format!` arguments.

use crate::bindings::sonde::plugin::log as wit;

pub use wit::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    wit::log(level, message)
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Logs at debug level: `sonde_plugin::debug!("saw {} drops", n)`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

/// Logs at info level: `sonde_plugin::info!("window is {}s", w)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

/// Logs at warn level: `sonde_plugin::warn!("emit failed: {e}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

/// Logs at error level: `sonde_plugin::error!("cannot register: {e}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}
