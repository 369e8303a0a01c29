//! A Rust process on the other side of a `shmkit::sync` primitive, for the
//! tests (Rust and Python) that need one that is neither a fork nor the
//! test's own interpreter.
//!
//! ```text
//! sync_peer hold LOCK          take the lock, print "held", sleep until killed
//! sync_peer take LOCK          take the lock, print "clean" or "owner_died"
//!                              (marking it repaired), release it
//! sync_peer set EVENT          set the event
//! sync_peer wait EVENT SECS    wait for the event; print "set" or "timeout"
//! sync_peer pong PING PONG N   N times: take a PING semaphore, release PONG
//! sync_peer barrier BARRIER    wait at the barrier; print the index or "broken"
//! sync_peer linger BARRIER     wait at the barrier, print the index, then
//!                              sleep until killed (a party that never returns)
//! ```

use std::io::Write;
use std::time::Duration;

use shmkit::sync::{Barrier, Event, Lock, Semaphore};

fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what}");
    let _ = out.flush();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str, Box<dyn std::error::Error>> {
        Ok(args.get(i).ok_or("missing argument")?.as_str())
    };
    match arg(0)? {
        "hold" => {
            let lock = Lock::open(arg(1)?)?;
            let guard = lock.lock().unwrap_or_else(|died| died.into_inner());
            say("held");
            loop {
                std::thread::sleep(Duration::from_secs(60));
                let _ = &guard;
            }
        }
        "take" => {
            let lock = Lock::open(arg(1)?)?;
            let taken = lock.lock();
            match &taken {
                Ok(_) => say("clean"),
                Err(died) => {
                    died.get_ref().mark_repaired();
                    say("owner_died");
                }
            }
            drop(taken);
        }
        "set" => Event::open(arg(1)?)?.set(),
        "wait" => {
            let event = Event::open(arg(1)?)?;
            let secs: f64 = arg(2)?.parse()?;
            let set = event.wait_timeout(Duration::from_secs_f64(secs));
            say(if set { "set" } else { "timeout" });
        }
        "pong" => {
            let ping = Semaphore::open(arg(1)?)?;
            let pong = Semaphore::open(arg(2)?)?;
            let n: u64 = arg(3)?.parse()?;
            say("ready");
            for _ in 0..n {
                ping.acquire();
                pong.release(1)?;
            }
        }
        "barrier" => {
            let barrier = Barrier::open(arg(1)?)?;
            match barrier.wait() {
                Ok(i) => say(&i.to_string()),
                Err(shmkit::Error::BrokenBarrier) => say("broken"),
                Err(e) => return Err(e.into()),
            }
        }
        "linger" => {
            let barrier = Barrier::open(arg(1)?)?;
            let index = barrier.wait()?;
            say(&index.to_string());
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
