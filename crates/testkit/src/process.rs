//! Running a child process to the end with the kernel's account of its peak memory (`wait4`'s `ru_maxrss`):
//! how the hostile-suite test and `fpaas bench decode` bound the memory of `fpaas decode`.

use std::io::Read;
use std::process::{Command, Stdio};

/// A finished child: its exit code (`None` when a signal ended it), what it wrote on stderr, its peak RSS.
#[derive(Debug)]
pub struct Finished {
    /// The exit code.
    pub code: Option<i32>,
    /// Standard error, as text.
    pub stderr: String,
    /// Peak resident memory in bytes.
    pub peak_rss_bytes: u64,
}

/// Runs `cmd` (stdout discarded, stderr captured) to its end.
///
/// # Errors
/// The child could not be started or waited for.
pub fn run_measured(cmd: &mut Command) -> std::io::Result<Finished> {
    // Reaped with wait4 below: std's wait does not return the child's resource usage.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let mut status = 0;
    // SAFETY: `rusage` is plain old data; all zeroes is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers; `usage` is fully written on success.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(std::io::Error::last_os_error());
    }
    let stderr = reader.join().unwrap_or_default();
    Ok(Finished {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr,
        peak_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    })
}

/// A long-running child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    child: std::process::Child,
}

impl Proc {
    /// Starts `cmd` (its stdout and stderr as the caller set them).
    ///
    /// # Panics
    /// When the process cannot be started.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self {
            child: cmd.spawn().expect("spawn child process"),
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (its pipes).
    pub fn child_mut(&mut self) -> &mut std::process::Child {
        &mut self.child
    }

    /// SIGKILL: no cleanup of any kind, as after `kill -9`.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `Some(exit code)` when it exited (`None` inside when
    /// a signal ended it), `None` when it did not exit in time.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<Option<i32>> {
        let pid = libc::pid_t::try_from(self.child.id()).ok()?;
        // SAFETY: sending a signal to our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_9();
    }
}
