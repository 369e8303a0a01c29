//! `shmkit::queue` between real processes: the peer is the `queue_peer`
//! example, a separate program that pushes or pops until it is SIGKILLed
//! at a random moment. Whatever the moment, the queue stays whole, nobody
//! hangs, and at most the one message in the dead process's hands is
//! lost.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shmkit::queue::{self, Queue};
use shmkit::sync::Wait;
use shmkit::{Error, SharedMemory};

const PATIENCE: Duration = Duration::from_secs(20);

/// The `queue_peer` example, built if this test run did not build it.
fn peer_program() -> &'static std::path::Path {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
        let path = profile_dir.join("examples").join("queue_peer");
        if !path.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "shmkit", "--example", "queue_peer"]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().unwrap().success(), "building queue_peer");
        }
        path
    })
}

fn peer(args: &[&str]) -> Child {
    Command::new(peer_program())
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("queue_peer runs")
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// A small pseudo-random sequence, seeded from the clock (no dependency).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        Rng(t.as_nanos() as u64 | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn rounds() -> usize {
    std::env::var("SHMKIT_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}

fn number(msg: &[u8]) -> u64 {
    u64::from_le_bytes(msg.try_into().expect("8-byte messages"))
}

#[test]
fn a_producer_killed_at_any_moment_delivers_a_prefix_and_the_next_producer_goes_on() {
    let mut rng = Rng::new();
    for _ in 0..rounds() {
        let q = Queue::create(1 << 12, 0).unwrap();
        let child = peer(&["count", q.name(), "100000000"]);
        let mut next = 0u64;
        // Let it push, and sometimes wait for room, then kill it.
        let stop = Instant::now() + Duration::from_micros(rng.below(30_000));
        while Instant::now() < stop {
            if rng.below(3) == 0 {
                if let Some(m) = q.try_pop().unwrap() {
                    assert_eq!(number(&m), next);
                    next += 1;
                }
            }
        }
        kill(child);
        while let Some(m) = q.try_pop().unwrap() {
            assert_eq!(number(&m), next, "a gap or a duplicate");
            next += 1;
        }
        // The next producer takes over the lock the dead one may have held.
        assert!(q.push_timeout(b"after", PATIENCE).unwrap());
        assert_eq!(q.pop_timeout(PATIENCE).unwrap().unwrap(), b"after");
        q.unlink().unwrap();
    }
}

#[test]
fn a_consumer_killed_at_any_moment_loses_at_most_the_message_in_hand() {
    let mut rng = Rng::new();
    for _ in 0..rounds() {
        let q = Queue::create(1 << 10, 8).unwrap();
        let total = 20_000u64;
        let log = SharedMemory::create(8 + 8 * total as usize).unwrap();
        let child = peer(&["log", q.name(), log.name()]);
        let kill_after = rng.below(total);
        let mut pushed = 0u64;
        let mut child = Some(child);
        while pushed < total {
            if pushed == kill_after {
                kill(child.take().unwrap());
            }
            if child.is_none() && q.is_full() {
                break;
            }
            assert!(
                q.push_timeout(&pushed.to_le_bytes(), PATIENCE).unwrap(),
                "a push hung"
            );
            pushed += 1;
        }
        if let Some(c) = child {
            // Let it take everything, then stop it.
            let deadline = Instant::now() + PATIENCE;
            while !q.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            kill(c);
        }
        let logged = log.atomic_u64(0).unwrap().load(Ordering::Acquire) as usize;
        let mut seen: Vec<u64> = (0..logged)
            .map(|i| number(&log.read_vec(8 + 8 * i, 8).unwrap()))
            .collect();
        // The next consumer takes over whatever lock the dead one held.
        while let Some(m) = q.pop_timeout(Duration::from_millis(10)).unwrap() {
            seen.push(number(&m));
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "a message was delivered twice");
        assert!(
            pushed - seen.len() as u64 <= 1,
            "{} of {pushed} lost",
            pushed - seen.len() as u64
        );
        assert!(q.try_push(b"x").unwrap());
        assert_eq!(q.try_pop().unwrap().unwrap(), b"x");
        log.unlink().unwrap();
        q.unlink().unwrap();
    }
}

#[test]
fn waits_end_at_their_deadline_and_wake_for_the_other_side() {
    let q = Queue::create(64, 0).unwrap();
    let t = Instant::now();
    assert_eq!(q.pop_timeout(Duration::from_millis(30)).unwrap(), None);
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert!(q.try_push(&[1; 24]).unwrap());
    assert!(q.try_push(&[2; 24]).unwrap());
    assert!(!q.push_timeout(&[3; 24], Duration::from_millis(30)).unwrap());
    let other = Queue::open(q.name()).unwrap();
    let popper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        other.pop().unwrap()
    });
    q.push(&[3; 24]).unwrap(); // waits for the pop
    assert_eq!(popper.join().unwrap(), [1; 24]);
    assert_eq!(q.pop().unwrap(), [2; 24]);
    assert_eq!(q.pop().unwrap(), [3; 24]);
    let mut asked = 0;
    let mut hook = || {
        asked += 1;
        true
    };
    let err = q
        .pop_wait(&mut Wait::forever().interruptible(&mut hook))
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted));
    q.unlink().unwrap();
}

#[test]
fn a_process_pushes_and_another_pops_every_message_in_order() {
    let q = Queue::create(256, 0).unwrap();
    let child = peer(&["count", q.name(), "5000"]);
    for i in 0..5000u64 {
        let m = q.pop_timeout(PATIENCE).unwrap().expect("the peer pushes");
        assert_eq!(number(&m), i);
    }
    let mut child = child;
    assert!(child.wait().unwrap().success());
    q.unlink().unwrap();
}

#[test]
fn oversized_messages_and_bad_sizes_are_refused() {
    let q = Queue::create(1000, 0).unwrap(); // rounded up to 1000
    assert_eq!(q.capacity(), 1000);
    assert_eq!(q.max_message(), 492);
    let err = q.push(&[0; 493]).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert!(q.try_push(&[0; 492]).unwrap());
    assert!(matches!(
        Queue::create(8, 0).unwrap_err(),
        Error::InvalidSize { .. }
    ));
    assert!(Queue::create(1 << 31, 0).is_err());
    let plain = SharedMemory::create(4096).unwrap();
    assert!(matches!(
        Queue::open(plain.name()).unwrap_err(),
        Error::WrongKind { .. }
    ));
    plain.unlink().unwrap();
    q.unlink().unwrap();
}

#[test]
fn describe_decodes_a_live_queue() {
    let q = Queue::create(4096, 5).unwrap();
    q.push_many(&[b"ab".as_slice(), b"cdefghijk"]).unwrap();
    let bytes = q
        .shared_memory()
        .read_vec(0, queue::DESCRIBE_PREFIX)
        .unwrap();
    let s = queue::describe(&bytes).unwrap();
    assert_eq!(
        (s.capacity, s.max_items, s.len, s.used),
        (4096, 5, 2, 16 + 24)
    );
    assert_eq!((s.pushed, s.popped), (2, 0));
    assert!(s.producer.is_none() && s.consumer.is_none() && !s.pending && !s.taking);
    assert!(queue::describe(&bytes[..100]).is_err());
    q.unlink().unwrap();
}
