//! The file sink: one JSON event per line, rotated by size (`events.json` →
//! `events.json.1` → ... → `events.json.<maxFiles>`, the oldest removed).

use crate::config::Invalid;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::Deserialize;

use crate::units::ByteSize;

/// `sinks.file` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// The file events are appended to.
    pub path: String,
    /// Rotate once the file reaches this size.
    #[serde(default = "super::default_max_size")]
    pub max_size: ByteSize,
    /// Rotated files to keep.
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

fn default_max_files() -> u32 {
    5
}

impl Config {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.path.is_empty() {
            return Err(Invalid::new("sinks.file.path", "must name a file"));
        }
        if self.max_size.0 < 4096 {
            return Err(Invalid::new("sinks.file.maxSize", "must be at least 4Ki"));
        }
        Ok(())
    }
}

pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    out: BufWriter<File>,
    /// Bytes given to `out` (the file's size once they are flushed).
    size: u64,
    /// The file's size after the last flush that succeeded: what a failed batch is cut back to.
    flushed: u64,
}

impl RotatingFile {
    pub fn open(config: &Config) -> io::Result<Self> {
        let path = PathBuf::from(&config.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            max_size: config.max_size.0,
            max_files: config.max_files,
            out: BufWriter::new(file),
            size,
            flushed: size,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.max_files).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        self.flushed = 0;
        Ok(())
    }
}

impl super::LineOutput for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Write::flush(&mut self.out)?;
        self.flushed = self.size;
        Ok(())
    }

    fn discard(&mut self) {
        // Drop what is buffered without writing it, and cut off whatever part of the batch
        // reached the file (cutting needs no free space).
        let (file, _unwritten) =
            std::mem::replace(&mut self.out, BufWriter::new(placeholder())).into_parts();
        if let Err(e) = file.set_len(self.flushed) {
            tracing::warn!(path = %self.path.display(), error = %e, "file sink cannot cut a failed batch off");
        }
        self.size = self.flushed;
        self.out = BufWriter::new(file);
    }
}

/// A file to hold the writer's place for a moment (`/dev/null`, always there).
fn placeholder() -> File {
    File::open("/dev/null").expect("/dev/null")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::LineOutput;

    #[test]
    fn a_failed_batch_is_cut_off_and_the_next_starts_on_a_whole_line() {
        let dir = std::env::temp_dir().join(format!("sonde-file-discard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.json");
        let config = Config {
            path: path.display().to_string(),
            max_size: ByteSize(1 << 20),
            max_files: 1,
        };
        let mut f = RotatingFile::open(&config).unwrap();
        f.write_line(b"{\"a\":1}\n").unwrap();
        f.flush().unwrap();
        // Half a batch reaches the file before the write fails.
        f.write_line(b"{\"b\":2}\n").unwrap();
        Write::flush(&mut f.out).unwrap();
        f.write_line(b"{\"c\":").unwrap();
        f.discard();
        f.write_line(b"{\"d\":4}\n").unwrap();
        f.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"d\":4}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("sonde-file-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.json");
        let config = Config {
            path: path.display().to_string(),
            max_size: ByteSize(4096),
            max_files: 2,
        };
        let mut f = RotatingFile::open(&config).unwrap();
        let line = [b'x'; 1023];
        let mut l = line.to_vec();
        l.push(b'\n');
        // 4 lines fill a file exactly; 13 lines make 4 files' worth, of which 3 are kept.
        for _ in 0..13 {
            f.write_line(&l).unwrap();
        }
        f.flush().unwrap();
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size(&path), 1024);
        assert_eq!(size(&f.rotated(1)), 4096);
        assert_eq!(size(&f.rotated(2)), 4096);
        assert!(!f.rotated(3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
