//! Futex wait and wake on a 32-bit word of shared memory, for the waits of
//! `crate::sync`. The futexes are shared (not `FUTEX_PRIVATE_FLAG`): the
//! kernel keys them by the page's file and offset, so processes that map
//! one segment at different addresses meet on the same word.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

/// How a [`wait`] ended. Every outcome is a reason to look at the word
/// again; none of them says that it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// A wake, or the word no longer held the expected value.
    Awake,
    /// The timeout passed.
    TimedOut,
    /// A signal arrived.
    Interrupted,
}

/// Sleeps while `word` holds `expected`, at most `timeout`.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Woken {
    let timeout = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) | Err(Errno::AGAIN) => Woken::Awake,
        Err(Errno::TIMEDOUT) => Woken::TimedOut,
        Err(Errno::INTR) => Woken::Interrupted,
        // EFAULT or EINVAL would be a bug in the caller (the word is a
        // valid, aligned atomic); waking is the harmless answer, as the
        // caller looks at the word again.
        Err(_) => Woken::Awake,
    }
}

/// Wakes up to `n` threads sleeping on `word`; how many were woken.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32)).unwrap_or(0)
}

/// Bumped in every child `fork` makes, so that a thread's cached id is
/// known to be stale there.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

thread_local! {
    /// This thread's id and the [`FORKS`] count it was read at.
    static TID: std::cell::Cell<(u64, u32)> = const { std::cell::Cell::new((u64::MAX, 0)) };
}

/// The calling thread's kernel id (what a robust mutex's word holds while
/// the thread owns it), cached per thread: `gettid` is a system call, and
/// lock paths ask often. A fork child's one thread has a new id; a
/// `pthread_atfork` hook marks the cache stale there.
pub(crate) fn tid() -> u32 {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a child handler that only bumps an atomic,
        // which is async-signal-safe; glibc keeps the pointer for the
        // process's life, and the function is static.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    let forks = FORKS.load(Ordering::Relaxed);
    TID.with(|cell| {
        let (at, tid) = cell.get();
        if at == forks {
            return tid;
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        cell.set((forks, tid));
        tid
    })
}

/// Whether thread `tid` belongs to this process (it is listed in
/// `/proc/self/task`).
pub(crate) fn is_own_thread(tid: u32) -> bool {
    tid != 0 && std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}
