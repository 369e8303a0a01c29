//! `shmkit::sync` between threads and between real processes: the peer is
//! the `sync_peer` example, a separate program that holds, takes, waits
//! and dies (SIGKILL) where the tests say.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use shmkit::object::HEADER_SIZE;
use shmkit::sync::{
    describe, Acquired, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, State,
    Wait, LOCK_SIZE,
};
use shmkit::{Error, SharedMemory};

/// A long enough wait for things that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

/// The `sync_peer` example, built if this test run did not build it
/// (`cargo test --test sync` builds no examples).
fn peer_program() -> &'static std::path::Path {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        // Integration tests live in target/<profile>/deps; examples beside.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
        let path = profile_dir.join("examples").join("sync_peer");
        if !path.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "shmkit", "--example", "sync_peer"]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().unwrap().success(), "building sync_peer");
        }
        path
    })
}

struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        let mut child = Command::new(peer_program())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("cargo test builds the sync_peer example");
        let out = BufReader::new(child.stdout.take().unwrap());
        Peer { child, out }
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim().to_owned()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn finish(mut self) -> String {
        let line = self.line();
        assert!(self.child.wait().unwrap().success());
        line
    }
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes only the struct on our stack.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn a_killed_holder_hands_the_lock_over_and_the_taker_is_told_until_repaired() {
    let lock = Lock::create().unwrap();
    let name = lock.name().unwrap().to_owned();
    let mut holder = Peer::start(&["hold", &name]);
    assert_eq!(holder.line(), "held");
    assert!(lock.is_locked());
    assert!(lock.try_lock().is_none());
    holder.kill();
    // Not repaired: this taker is told, and so is the next.
    let died = lock
        .lock_timeout(PATIENCE)
        .expect("handed over")
        .unwrap_err();
    drop(died.into_inner());
    assert!(lock.owner_died());
    let died = lock.lock_timeout(PATIENCE).unwrap().unwrap_err();
    died.get_ref().mark_repaired();
    drop(died);
    assert!(lock.lock_timeout(PATIENCE).unwrap().is_ok());
    lock.unlink().unwrap();
}

#[test]
fn another_process_takes_over_from_a_killed_holder_and_repairs() {
    let lock = Lock::create().unwrap();
    let name = lock.name().unwrap().to_owned();
    let mut holder = Peer::start(&["hold", &name]);
    assert_eq!(holder.line(), "held");
    let taker = Peer::start(&["take", &name]);
    holder.kill();
    assert_eq!(taker.finish(), "owner_died");
    assert!(lock.lock().is_ok(), "the taker marked it repaired");
    assert_eq!(Peer::start(&["take", &name]).finish(), "clean");
    lock.unlink().unwrap();
}

#[test]
fn lock_waits_honour_timeouts_and_only_the_holder_releases() {
    let lock = Lock::create().unwrap();
    let guard = lock.lock().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(lock.try_lock().is_none());
            assert!(lock.lock_timeout(Duration::from_millis(20)).is_none());
            assert!(!lock.is_owned());
            assert!(matches!(lock.release(), Err(Error::NotOwner)));
        });
    });
    assert!(lock.is_owned());
    // This thread waiting for itself would never end.
    assert!(matches!(
        lock.acquire(&mut Wait::forever()),
        Err(Error::WouldDeadlock)
    ));
    assert_eq!(lock.acquire(&mut Wait::no_wait()).unwrap(), None);
    drop(guard);
    assert!(matches!(lock.release(), Err(Error::NotOwner)));
    lock.unlink().unwrap();
}

#[test]
fn a_lock_blocks_a_waiter_until_released() {
    let lock = Lock::create().unwrap();
    let event = Event::create().unwrap();
    let guard = lock.lock().unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            event.set();
            let _g = lock.lock().unwrap();
            assert!(lock.is_owned());
        });
        event.wait();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "the waiter cannot have the lock yet");
        drop(guard);
    });
    assert!(!lock.is_locked());
    lock.unlink().unwrap();
    event.unlink().unwrap();
}

#[test]
fn an_rlock_counts_its_holds_and_releases_them_all_for_a_condition() {
    let lock = RLock::create().unwrap();
    for _ in 0..3 {
        assert_eq!(
            lock.acquire(&mut Wait::no_wait()).unwrap(),
            Some(Acquired::Clean)
        );
    }
    let shm = lock.shared_memory().unwrap();
    match describe(&shm.read_vec(0, shm.size()).unwrap()) {
        Some(State::Lock {
            depth, owner_tid, ..
        }) => {
            assert_eq!(depth, 3);
            assert!(owner_tid.is_some());
        }
        other => panic!("{other:?}"),
    }
    std::thread::scope(|s| {
        s.spawn(|| assert!(matches!(lock.release(), Err(Error::NotOwner))));
    });
    for _ in 0..3 {
        lock.release().unwrap();
    }
    assert!(!lock.is_locked());
    assert!(matches!(lock.release(), Err(Error::NotOwner)));
    lock.unlink().unwrap();
}

fn maps_of(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            l.ends_with(&format!("/dev/shm/{name}")) || l.contains(&format!("/dev/shm/{name} "))
        })
        .count()
}

#[test]
fn a_handle_dropped_while_its_lock_is_held_here_keeps_its_mapping() {
    let lock = Lock::create().unwrap();
    let name = lock.name().unwrap().to_owned();
    let held = Lock::open(&name).unwrap();
    assert_eq!(maps_of(&name), 2);
    assert!(held.acquire(&mut Wait::no_wait()).unwrap().is_some());
    drop(held);
    // Unmapping would leave this thread's robust list pointing at nothing.
    assert_eq!(maps_of(&name), 2);
    lock.release().unwrap();
    let other = Lock::open(&name).unwrap();
    assert_eq!(maps_of(&name), 3);
    drop(other);
    assert_eq!(maps_of(&name), 2, "a free lock's handle unmaps");
    // The lock still works for the thread's later holds and releases.
    assert!(lock.lock().is_ok());
    lock.unlink().unwrap();
}

#[test]
fn semaphores_count_across_processes_and_bounded_ones_refuse_to_overflow() {
    let ping = Semaphore::create(0).unwrap();
    let pong = Semaphore::create(0).unwrap();
    let mut peer = Peer::start(&["pong", ping.name().unwrap(), pong.name().unwrap(), "200"]);
    assert_eq!(peer.line(), "ready");
    for _ in 0..200 {
        ping.release(1).unwrap();
        pong.acquire();
    }
    assert!(peer.child.wait().unwrap().success());
    assert_eq!((ping.value(), pong.value()), (0, 0));
    assert!(!pong.acquire_timeout(Duration::from_millis(5)));

    let bounded = BoundedSemaphore::create(2).unwrap();
    assert!(matches!(bounded.release(1), Err(Error::TooManyReleases)));
    assert!(bounded.try_acquire() && bounded.try_acquire() && !bounded.try_acquire());
    bounded.release(2).unwrap();
    assert_eq!(bounded.value(), 2);
    assert!(matches!(ping.release(shmkit::sync::MAX_COUNT), Ok(())));
    assert!(matches!(ping.release(1), Err(Error::TooManyReleases)));
    for s in [&ping, &pong] {
        s.unlink().unwrap();
    }
    bounded.unlink().unwrap();
}

#[test]
fn an_event_wakes_a_waiting_process_and_a_wait_times_out() {
    let event = Event::create().unwrap();
    let name = event.name().unwrap().to_owned();
    assert_eq!(Peer::start(&["wait", &name, "0.01"]).finish(), "timeout");
    let waiter = Peer::start(&["wait", &name, "30"]);
    // The peer's wait may begin before or after the set: both must end "set".
    Peer::start(&["set", &name]).child.wait().unwrap();
    assert_eq!(waiter.finish(), "set");
    assert!(event.is_set());
    event.clear();
    assert!(!event.is_set());
    assert!(!event.wait_timeout(Duration::from_millis(5)));
    event.unlink().unwrap();
}

#[test]
fn a_blocked_thread_burns_almost_no_cpu() {
    let event = Event::create().unwrap();
    let lock = Lock::create().unwrap();
    let sem = Semaphore::create(0).unwrap();
    let guard = lock.lock().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let before = thread_cpu();
            assert!(!event.wait_timeout(Duration::from_millis(400)));
            assert!(lock.lock_timeout(Duration::from_millis(400)).is_none());
            assert!(!sem.acquire_timeout(Duration::from_millis(400)));
            let used = thread_cpu() - before;
            // 1.2 s blocked: under 5 ms per second.
            assert!(used < Duration::from_millis(6), "{used:?}");
        });
    });
    drop(guard);
    event.unlink().unwrap();
    lock.unlink().unwrap();
    sem.unlink().unwrap();
}

#[test]
fn an_interruption_hook_ends_every_kind_of_wait() {
    let lock = Lock::create().unwrap();
    let event = Event::create().unwrap();
    let sem = Semaphore::create(0).unwrap();
    let cond = Condition::create().unwrap();
    let _g = lock.lock().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut calls = 0;
            let mut hook = || {
                calls += 1;
                true
            };
            let mut w = Wait::forever().interruptible(&mut hook);
            assert!(matches!(lock.acquire(&mut w), Err(Error::Interrupted)));
            let mut w = Wait::forever().interruptible(&mut hook);
            assert!(matches!(event.wait_with(&mut w), Err(Error::Interrupted)));
            let mut w = Wait::forever().interruptible(&mut hook);
            assert!(matches!(sem.acquire_with(&mut w), Err(Error::Interrupted)));
            let _ = cond.acquire_lock().unwrap();
            let mut w = Wait::forever().interruptible(&mut hook);
            assert!(matches!(cond.wait_with(&mut w), Err(Error::Interrupted)));
            assert!(
                cond.is_owned(),
                "the wait gives the lock back even when cut short"
            );
            cond.release_lock().unwrap();
            assert_eq!(calls, 4);
        });
    });
    for name in [lock.name(), event.name(), sem.name(), cond.name()] {
        shmkit::unlink(name.unwrap()).unwrap();
    }
}

#[test]
fn a_condition_notifies_waiters_and_refuses_callers_without_the_lock() {
    let cond = Condition::create().unwrap();
    let other = Condition::open(cond.name().unwrap()).unwrap();
    let flag = Event::create().unwrap();
    assert!(matches!(cond.notify(1), Err(Error::NotOwner)));
    assert!(matches!(
        cond.wait_timeout(Duration::ZERO),
        Err(Error::NotOwner)
    ));
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = other.acquire_lock().unwrap();
            flag.set();
            let (notified, how) = other.wait_timeout(PATIENCE).unwrap();
            assert!(notified);
            assert_eq!(how, Acquired::Clean);
            assert!(other.is_owned());
            other.release_lock().unwrap();
        });
        flag.wait();
        // The waiter holds the lock until its wait releases it.
        let _ = cond.acquire_lock().unwrap();
        cond.notify(1).unwrap();
        cond.release_lock().unwrap();
    });
    // With a named RLock: an attacher finds it through the condition.
    let lock = RLock::create().unwrap();
    let c2 = Condition::create_with(&shmkit::Options::new(), None, lock.name()).unwrap();
    let c2b = Condition::open(c2.name().unwrap()).unwrap();
    assert_eq!(c2b.lock_name(), lock.name());
    let _g = lock.lock().unwrap();
    assert!(c2b.is_owned());
    assert!(!c2b.wait_timeout(Duration::from_millis(1)).unwrap().0);
    assert!(lock.is_owned());
    drop(_g);
    for n in [cond.name(), flag.name(), lock.name(), c2.name()] {
        shmkit::unlink(n.unwrap()).unwrap();
    }
}

#[test]
fn a_barrier_passes_threads_and_breaks_on_abort_reset_and_timeout() {
    let barrier = Barrier::create(3).unwrap();
    let mut got: Vec<u32> = std::thread::scope(|s| {
        let ts: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let b = Barrier::open(barrier.name().unwrap()).unwrap();
                    (b.wait().unwrap(), b.wait().unwrap()).0
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    got.sort();
    assert_eq!(got, [0, 1, 2]);
    assert!(matches!(
        barrier.wait_timeout(Duration::from_millis(10)),
        Err(Error::BrokenBarrier)
    ));
    assert!(barrier.is_broken());
    assert!(matches!(barrier.wait(), Err(Error::BrokenBarrier)));
    barrier.reset().unwrap();
    assert!(!barrier.is_broken());
    std::thread::scope(|s| {
        let t = s.spawn(|| barrier.wait());
        while barrier.n_waiting() == 0 {
            std::thread::yield_now();
        }
        barrier.abort().unwrap();
        assert!(matches!(t.join().unwrap(), Err(Error::BrokenBarrier)));
    });
    barrier.unlink().unwrap();
}

#[test]
fn a_party_that_dies_between_waits_breaks_the_barrier_but_one_dying_inside_does_not() {
    // Dies after passing: the next generation can never fill.
    let barrier = Barrier::create(2).unwrap();
    let name = barrier.name().unwrap().to_owned();
    let mut party = Peer::start(&["linger", &name]);
    barrier.wait().unwrap();
    assert!(!party.line().is_empty());
    party.kill();
    assert!(matches!(
        barrier.wait_timeout(PATIENCE),
        Err(Error::BrokenBarrier)
    ));
    barrier.unlink().unwrap();

    // Dies while waiting: it has arrived, the others still pass.
    let barrier = Barrier::create(3).unwrap();
    let name = barrier.name().unwrap().to_owned();
    let party = Peer::start(&["barrier", &name]);
    while barrier.n_waiting() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    party.kill();
    std::thread::scope(|s| {
        let t = s.spawn(|| Barrier::open(&name).unwrap().wait_timeout(PATIENCE));
        assert!(barrier.wait_timeout(PATIENCE).is_ok());
        assert!(t.join().unwrap().is_ok());
    });
    barrier.unlink().unwrap();
}

#[test]
fn primitives_live_at_an_offset_of_a_users_segment() {
    let shm = SharedMemory::create(4096).unwrap();
    assert!(matches!(
        Lock::init_at(&shm, 4),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        Lock::init_at(&shm, 4096 - 8),
        Err(Error::OutOfBounds { .. })
    ));
    let lock = Lock::init_at(&shm, 128).unwrap();
    let again = Lock::at(&shm, 128).unwrap();
    let g = lock.lock().unwrap();
    assert!(again.is_locked());
    drop(g);
    let event = Event::init_at(&shm, 128 + LOCK_SIZE).unwrap();
    event.set();
    assert!(Event::at(&shm, 128 + LOCK_SIZE).unwrap().is_set());
    let sem = Semaphore::init_at(&shm, 512, 1).unwrap();
    assert!(sem.try_acquire());
    assert!(lock.name().is_none());
    assert!(lock.unlink().is_err());
    drop((lock, again, event, sem));
    shm.unlink().unwrap();
}

#[test]
fn describe_reads_each_kind_and_refuses_short_or_foreign_bytes() {
    let lock = Lock::create().unwrap();
    let sem = BoundedSemaphore::create(5).unwrap();
    let event = Event::create().unwrap();
    let barrier = Barrier::create(4).unwrap();
    let bytes = |shm: &SharedMemory| shm.read_vec(0, shm.size().min(512)).unwrap();
    let _g = lock.lock().unwrap();
    let b = bytes(lock.shared_memory().unwrap());
    assert!(matches!(
        describe(&b),
        Some(State::Lock {
            owner_tid: Some(_),
            depth: 1,
            owner_died: false,
            ..
        })
    ));
    assert_eq!(describe(&b[..HEADER_SIZE + 10]), None);
    assert!(matches!(
        describe(&bytes(sem.shared_memory().unwrap())),
        Some(State::Semaphore {
            value: 5,
            bound: 5,
            ..
        })
    ));
    event.set();
    assert!(matches!(
        describe(&bytes(event.shared_memory().unwrap())),
        Some(State::Event { set: true, .. })
    ));
    assert!(describe(&bytes(barrier.shared_memory().unwrap())).is_some());
    assert_eq!(describe(&[0u8; 512]), None);
    assert!(matches!(
        Event::open(lock.name().unwrap()),
        Err(Error::WrongKind { .. })
    ));
    drop(_g);
    for n in [lock.name(), sem.name(), event.name(), barrier.name()] {
        shmkit::unlink(n.unwrap()).unwrap();
    }
}
