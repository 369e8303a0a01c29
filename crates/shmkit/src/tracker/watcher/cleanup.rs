//! The watcher's last work, once its process is gone: unlink each tracked
//! segment nobody uses (`super::probe`), drop the marks so that waiting
//! attachers see the outcome, report as CPython's resource tracker does
//! (on stderr, one write a line), and retry for about 300 ms the segments
//! that only co-dying processes still hold. Bounded, so a watcher never
//! outlives its process by long.
use std::sync::atomic::Ordering;

use crate::sys::after_fork;
use crate::sys::stack_text::Line;
use crate::tracker::mark::Marks;
use crate::tracker::{Table, INTENT, SLOTS, VALID};

use super::probe::{probe, want, Probe};

/// Unlinks the leftover segments in `table`, then drops `marks`, so that
/// processes waiting to attach see the outcome.
pub(super) fn cleanup(table: Table, marks: &mut Marks) {
    let live = |i: usize| match table.state(i).load(Ordering::Acquire) {
        VALID => table.first_of_name(i),
        INTENT => true,
        _ => false,
    };
    let has = |set: &[u64], i: usize| set[i / 64] & (1 << (i % 64)) != 0;
    // Unlink first, talk later: a parent may be checking for the segment
    // the moment its child is gone.
    // CPython's count: names registered and not unregistered, once each,
    // those someone else unlinked included (CPython's own tests count
    // them, and expect the FileNotFoundError line each gets). An intent
    // counts only if it left a file of ours.
    let mut leaked = 0usize;
    let mut gone = [0u64; SLOTS / 64];
    // Names still in use (see the retries below).
    let mut pending = [0u64; SLOTS / 64];
    let mut retry = [0u64; SLOTS / 64];
    // Registrations first: an intent for the same file defers to them.
    for pass in [VALID, INTENT] {
        for i in table.used_slots() {
            if table.state(i).load(Ordering::Acquire) != pass || !live(i) {
                continue;
            }
            let intent = pass == INTENT;
            // A quiet registration is cleaned up like any other, in silence.
            let loud = !table.is_quiet(i);
            match probe(&table.name(i), want(&table, i), marks.fd_of(i)) {
                Probe::InUse { retry: again } => {
                    leaked += usize::from(loud);
                    pending[i / 64] |= u64::from(loud) << (i % 64);
                    if again {
                        retry[i / 64] |= 1 << (i % 64);
                    }
                }
                Probe::Gone | Probe::Foreign if !intent => {
                    leaked += usize::from(loud);
                    gone[i / 64] |= u64::from(loud) << (i % 64);
                }
                Probe::Unlinked => leaked += usize::from(loud),
                Probe::Gone | Probe::Foreign => {}
            }
        }
    }
    marks.clear();
    if leaked > 0 {
        Line::new()
            .push(b"shmkit: UserWarning: resource_tracker: There appear to be ")
            .num(leaked)
            .push(b" leaked shared_memory objects to clean up at shutdown\n")
            .emit();
    }
    for i in (0..SLOTS).filter(|&i| has(&gone, i)) {
        let name = table.name(i);
        Line::new()
            .push(b"shmkit: UserWarning: resource_tracker: '/")
            .push(&name)
            .push(b"': [Errno 2] No such file or directory: '/")
            .push(&name)
            .push(b"'\n")
            .emit();
    }
    // Retried a few times: names whose every user is itself exiting (it
    // died with ours and is still closing its files).
    // Buys: a segment a co-dying process (a fork child) still holds for a
    // moment is unlinked, not reported "still open" and leaked.
    for delay in [10, 20, 40, 80, 150] {
        if retry.iter().all(|&w| w == 0) {
            break;
        }
        after_fork::sleep_ms(delay);
        for i in 0..SLOTS {
            if !has(&retry, i) {
                continue;
            }
            match probe(&table.name(i), want(&table, i), None) {
                Probe::InUse { retry: true } => {}
                Probe::InUse { retry: false } => retry[i / 64] &= !(1 << (i % 64)),
                _ => {
                    retry[i / 64] &= !(1 << (i % 64));
                    pending[i / 64] &= !(1 << (i % 64));
                }
            }
        }
    }
    for i in (0..SLOTS).filter(|&i| has(&pending, i)) {
        Line::new()
            .push(b"shmkit: resource_tracker: '/")
            .push(&table.name(i))
            .push(b"': still open in another process; not unlinked\n")
            .emit();
    }
}
