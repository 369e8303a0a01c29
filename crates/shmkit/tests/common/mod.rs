//! What the integration tests share: a guard that unlinks a segment however
//! the test ends, and names no other test (or process) uses.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Unlinks its segment when dropped, whatever happened.
pub struct Unlink(pub String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmkit::unlink(&self.0);
    }
}

/// A name unique to this process and call, `shmkit_<tag>_test_<pid>_<n>`,
/// with the guard that unlinks it.
pub fn fresh_name(tag: &str) -> (String, Unlink) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "shmkit_{tag}_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    (name.clone(), Unlink(name))
}
