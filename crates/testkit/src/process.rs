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
