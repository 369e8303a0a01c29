//! Writing output that survives a closed pipe, and the small formats the
//! commands share (sizes, ages, process names, user names).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// Lines on stdout. A closed pipe (`shmkit ls | head`) ends the output
/// quietly instead of panicking as `println!` would.
pub struct Out {
    out: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    pub fn new() -> Out {
        Out {
            out: std::io::stdout().lock(),
            closed: false,
        }
    }

    pub fn line(&mut self, text: &str) {
        if !self.closed && writeln!(self.out, "{text}").is_err() {
            self.closed = true;
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// One line on stderr, prefixed with `shmkit: `.
pub fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "shmkit: {message}");
}

/// Prints `message` as an error and returns [`crate::EXIT_ERROR`].
pub fn fail(message: &str) -> i32 {
    warn(message);
    crate::EXIT_ERROR
}

/// `191B`, `4.0K`, `512M`: powers of 1024, as `ls -h` prints them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// `42s`, `5m`, `3h`, `2d`.
pub fn human_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The command name of a process (`/proc/PID/comm`), if it can be read.
pub fn command_of(pid: u32) -> Option<String> {
    let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    Some(String::from_utf8_lossy(&comm).trim_end().to_owned())
}

/// User names by uid, from `/etc/passwd`. Users known only to another name
/// service (LDAP, …) are shown by number; that is all `ls` needs, and it
/// spares a dependency on libc's `getpwuid_r`.
pub fn user_names() -> HashMap<u32, String> {
    let Ok(text) = std::fs::read_to_string("/etc/passwd") else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// The live processes among the shmkit trackers of segment `name`: while
/// one lives, its tracker will unlink the segment when its process tree
/// exits, and it may attach again meanwhile, so an unused segment it tracks
/// is idle, not leaked.
pub fn live_trackers(tracked: &HashMap<String, Vec<i32>>, name: &str) -> Vec<i32> {
    tracked
        .get(name)
        .map(|pids| {
            pids.iter()
                .copied()
                .filter(|p| *p > 0 && std::path::Path::new(&format!("/proc/{p}")).exists())
                .collect()
        })
        .unwrap_or_default()
}

/// `1234 (python3), 5678 (shmkit)`.
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(|&p| match command_of(p) {
            Some(c) => format!("{p} ({c})"),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_ls() {
        assert_eq!(human_size(191), "191B");
        assert_eq!(human_size(4096), "4.0K");
        assert_eq!(human_size(512 << 20), "512M");
        assert_eq!(human_size(u64::MAX), "16E");
        assert_eq!(human_age(Duration::from_secs(5)), "5s");
        assert_eq!(human_age(Duration::from_secs(600)), "10m");
        assert_eq!(human_age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human_age(Duration::from_secs(5 * 86400)), "5d");
    }
}
