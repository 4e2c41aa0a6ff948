//! `sonde trace` as a child process: started, waited on until it has attached its probes (its
//! `sonde trace: attached ...` line on stderr), then left to finish or interrupted; killed
//! when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::{sonde_bin, try_poll_until, Finished};

pub struct Trace {
    child: Child,
    line: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Trace {
    /// Starts `sonde trace ARGS...`.
    pub fn start(args: &[&str]) -> Trace {
        let bin = sonde_bin();
        let line = format!("sonde trace {}", args.join(" "));
        let mut child = Command::new(&bin)
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
        let mut out = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                match line {
                    Ok(l) => lines.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        Trace {
            child,
            line,
            stdout: Some(stdout),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Waits for the `sonde trace: attached` line; panics with stderr if the command exits
    /// or the line does not come within `timeout`.
    #[track_caller]
    pub fn wait_attached(&mut self, timeout: Duration) {
        let attached = try_poll_until(timeout, || {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("sonde trace: attached"))
            {
                return Some(true);
            }
            match self.child.try_wait() {
                Ok(Some(_)) => Some(false),
                _ => None,
            }
        });
        if attached != Some(true) {
            let _ = self.child.kill();
            panic!(
                "`{}` did not attach ({}); its stderr:\n{}",
                self.line,
                if attached.is_none() {
                    format!("timed out after {timeout:?}")
                } else {
                    "it exited".to_string()
                },
                self.stderr.lock().unwrap().join("\n")
            );
        }
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        // SAFETY: signalling our own child, whose pid is not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
    }

    /// Waits for the command to exit; kills it and panics if it is still running after
    /// `timeout`.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let status = try_poll_until(timeout, || self.child.try_wait().ok().flatten());
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "`{}` was still running after {timeout:?}; its stderr:\n{}",
                self.line,
                self.stderr.lock().unwrap().join("\n")
            );
        };
        let stdout = self.stdout.take().unwrap().join().unwrap_or_default();
        if let Some(r) = self.stderr_reader.take() {
            let _ = r.join();
        }
        let stderr = self.stderr.lock().unwrap().join("\n");
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
