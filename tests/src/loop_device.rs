//! A loop device over a file in a temp dir: a disk of its own, which nothing else touches, for
//! exact block I/O counts.

use std::process::Command;

use crate::{run_command, TempDir};

/// A loop device over a file in a temp dir, detached when dropped (also when a test fails).
pub struct LoopDevice {
    path: String,
    _dir: TempDir,
}

impl LoopDevice {
    pub fn new() -> LoopDevice {
        let dir = TempDir::new();
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(16 << 20))
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", file.display()));
        let path = run_command(&format!(
            "losetup --find --show --sector-size 4096 {}",
            file.display()
        ))
        .trim()
        .to_string();
        assert!(path.starts_with("/dev/loop"), "losetup printed {path:?}");
        LoopDevice { path, _dir: dir }
    }

    /// `loopN`, the device label.
    pub fn name(&self) -> &str {
        self.path.trim_start_matches("/dev/")
    }

    /// `major:minor`.
    pub fn dev(&self) -> String {
        std::fs::read_to_string(format!("/sys/block/{}/dev", self.name()))
            .expect("the loop device's dev file")
            .trim()
            .to_string()
    }

    /// `count` direct (O_DIRECT) transfers of one 4 KiB block each, one request apiece.
    pub fn dd(&self, write: bool, count: usize) {
        let args = if write {
            format!("if=/dev/zero of={} oflag=direct", self.path)
        } else {
            format!("if={} of=/dev/null iflag=direct", self.path)
        };
        run_command(&format!("dd {args} bs=4096 count={count} status=none"));
    }
}

impl Default for LoopDevice {
    fn default() -> Self {
        LoopDevice::new()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}
