//! How long a blocking call may wait, and what it does while it waits: a
//! short spin, then sleeps in the kernel in slices, with a hook run between
//! slices (and after a signal) that may cut the wait short.

use std::sync::atomic::AtomicU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sys::futex::{self, Woken};
use crate::{Error, Result};

/// How long a wait looks again and again, with a CPU pause in between,
/// before it sleeps. A sleeper that is woken takes several microseconds to
/// run again, and its waker pays a system call: a peer that answers within
/// this time (the other side of a ping-pong, a consumer keeping up with its
/// producer) is seen with neither. A wait that does sleep has spent this
/// much CPU once, which leaves a process blocked for a second far under a
/// millisecond of CPU.
const SPIN: Duration = Duration::from_micros(30);
/// On a machine with one CPU the peer cannot run while we spin: a few looks
/// only.
const SPINS_ONE_CPU: u32 = 8;

/// Looks with `look` until it gives `Some`, for at most [`SPIN`] (a few
/// times only where no other CPU could run the process it waits for).
pub(crate) fn spin<T>(mut look: impl FnMut() -> Option<T>) -> Option<T> {
    static MANY_CPUS: OnceLock<bool> = OnceLock::new();
    let many =
        *MANY_CPUS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
    let start = Instant::now();
    for i in 0u32.. {
        std::hint::spin_loop();
        if let Some(t) = look() {
            return Some(t);
        }
        // The clock costs more than a look: read it every 32 looks.
        let out = if many {
            i % 32 == 31 && start.elapsed() >= SPIN
        } else {
            i + 1 >= SPINS_ONE_CPU
        };
        if out {
            break;
        }
    }
    None
}

/// The longest sleep between two runs of the interruption hook (and two
/// checks of a barrier's parties). Long enough that a process blocked for
/// a second wakes only a handful of times; short enough for Ctrl-C.
pub const SLICE: Duration = Duration::from_millis(50);

/// The limits of one blocking call: a deadline (or none, or "do not block
/// at all"), and an optional hook run between sleeps and after a signal,
/// which ends the wait with [`Error::Interrupted`] by returning `true`.
///
/// ```
/// use std::time::Duration;
/// use shmkit::sync::{Event, Wait};
///
/// let event = Event::create()?;
/// let mut asked = 0;
/// let mut hook = || { asked += 1; asked == 2 }; // give up at the 2nd look
/// let err = event.wait_with(&mut Wait::forever().interruptible(&mut hook)).unwrap_err();
/// assert!(matches!(err, shmkit::Error::Interrupted));
/// assert!(!event.wait_with(&mut Wait::timeout(Duration::from_millis(1)))?);
/// # event.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct Wait<'h> {
    deadline: Option<Instant>,
    block: bool,
    hook: Option<&'h mut dyn FnMut() -> bool>,
}

impl std::fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("deadline", &self.deadline)
            .field("block", &self.block)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl<'h> Wait<'h> {
    /// Wait as long as it takes.
    pub fn forever() -> Self {
        Wait {
            deadline: None,
            block: true,
            hook: None,
        }
    }

    /// Do not wait at all: try once.
    pub fn no_wait() -> Self {
        Wait {
            deadline: None,
            block: false,
            hook: None,
        }
    }

    /// Wait at most `timeout` (a timeout too long to represent waits
    /// forever).
    pub fn timeout(timeout: Duration) -> Self {
        Wait {
            deadline: Instant::now().checked_add(timeout),
            block: true,
            hook: None,
        }
    }

    /// Python's `(block, timeout)`: no wait unless `block`; then `timeout`
    /// seconds (negative is zero) or forever.
    pub fn from_python(block: bool, timeout: Option<f64>) -> Self {
        match (block, timeout) {
            (false, _) => Wait::no_wait(),
            (true, None) => Wait::forever(),
            (true, Some(t)) => {
                Wait::timeout(Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX))
            }
        }
    }

    /// Runs `hook` between sleeps and after a signal; the wait ends with
    /// [`Error::Interrupted`] when it returns `true`.
    pub fn interruptible(mut self, hook: &'h mut dyn FnMut() -> bool) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Whether the wait has a deadline.
    pub fn has_deadline(&self) -> bool {
        self.deadline.is_some()
    }

    /// Whether the call may block at all.
    pub fn blocks(&self) -> bool {
        self.block
    }

    /// The next sleep: up to [`SLICE`], none once the deadline passed (or
    /// for a call that may not block).
    pub(crate) fn slice(&self) -> Option<Duration> {
        if !self.block {
            return None;
        }
        match self.deadline {
            None => Some(SLICE),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(SLICE))
            }
        }
    }

    /// Runs the hook: `Err(Interrupted)` if it asks to stop.
    pub(crate) fn check(&mut self) -> Result<()> {
        match self.hook.as_mut() {
            Some(hook) => {
                if hook() {
                    Err(Error::Interrupted)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Sleeps on `word` while it holds `expected`, for one slice at most;
    /// `Ok(false)` once the deadline passed. Runs the hook after a slice
    /// that ran out and after a signal. A wait with neither deadline nor
    /// hook sleeps without a timeout: nothing would run between slices,
    /// and an untimed sleep spares the kernel a timer.
    pub(crate) fn sleep(&mut self, word: &AtomicU32, expected: u32) -> Result<bool> {
        let Some(slice) = self.slice() else {
            return Ok(false);
        };
        let timeout = (self.deadline.is_some() || self.hook.is_some()).then_some(slice);
        match futex::wait(word, expected, timeout) {
            Woken::Awake => Ok(true),
            Woken::TimedOut | Woken::Interrupted => {
                self.check()?;
                Ok(true)
            }
        }
    }
}

/// What one attempt of a blocking operation found.
pub(crate) enum Step<T> {
    /// It succeeded.
    Done(T),
    /// It must wait: sleep while the word holds this value.
    Sleep(u32),
    /// The word changed under the attempt: try again at once.
    Retry,
}

/// Runs `attempt` until it succeeds or the wait's limits end it: first for
/// up to [`SPIN`] without sleeping (`attempt(false)`: it should only
/// try), then with sleeps in between (`attempt(true)`: it should announce
/// itself as a sleeper before naming the value to sleep on). `Ok(None)`
/// when the deadline passed.
pub(crate) fn block_on<T>(
    word: &AtomicU32,
    wait: &mut Wait<'_>,
    mut attempt: impl FnMut(bool) -> Step<T>,
) -> Result<Option<T>> {
    if let Step::Done(t) = attempt(false) {
        return Ok(Some(t));
    }
    if !wait.block {
        return Ok(None);
    }
    let spun = spin(|| match attempt(false) {
        Step::Done(t) => Some(t),
        _ => None,
    });
    if let Some(t) = spun {
        return Ok(Some(t));
    }
    loop {
        match attempt(true) {
            Step::Done(t) => return Ok(Some(t)),
            Step::Retry => continue,
            Step::Sleep(value) => {
                if !wait.sleep(word, value)? {
                    // One last look: what arrived with the deadline counts.
                    return Ok(match attempt(false) {
                        Step::Done(t) => Some(t),
                        _ => None,
                    });
                }
            }
        }
    }
}
