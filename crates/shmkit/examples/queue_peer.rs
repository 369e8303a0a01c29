//! A Rust process on the other side of a `shmkit::queue::Queue`, for the
//! tests (Rust and Python) that need a producer or consumer that is
//! neither a fork nor the test's own interpreter.
//!
//! ```text
//! queue_peer push QUEUE MSG...   push each MSG (as UTF-8 bytes), print "pushed N"
//! queue_peer pop QUEUE N SECS    pop N messages, waiting at most SECS for
//!                                each; print each as hex, one a line, or
//!                                "timeout"
//! queue_peer count QUEUE N       push the 8-byte little-endian numbers 0..N
//! queue_peer log QUEUE LOG     pop 8-byte numbers forever; after each, store
//!                                it in segment LOG: a count at offset 0,
//!                                the numbers from offset 8
//! queue_peer flood QUEUE N SIZE  push N messages of SIZE bytes
//! queue_peer flood-many QUEUE N SIZE   the same, 256 at a time (push_many)
//! queue_peer bench-many QUEUE N        the same as bench, up to 256 at a time
//! queue_peer bench QUEUE N       pop N messages, then print the seconds the
//!                                pops took (the other side pushes)
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use shmkit::queue::Queue;

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
    let q = Queue::open(arg(1)?)?;
    match arg(0)? {
        "push" => {
            for msg in &args[2..] {
                q.push(msg.as_bytes())?;
            }
            say(&format!("pushed {}", args.len() - 2));
        }
        "pop" => {
            let n: usize = arg(2)?.parse()?;
            let secs: f64 = arg(3)?.parse()?;
            for _ in 0..n {
                match q.pop_timeout(Duration::from_secs_f64(secs))? {
                    Some(msg) => say(&msg.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                    None => {
                        say("timeout");
                        break;
                    }
                }
            }
        }
        "count" => {
            let n: u64 = arg(2)?.parse()?;
            for i in 0..n {
                q.push(&i.to_le_bytes())?;
            }
        }
        "log" => {
            let log = shmkit::SharedMemory::open(arg(2)?)?;
            let count = log.atomic_u64(0)?;
            loop {
                let msg = q.pop()?;
                let n = count.load(std::sync::atomic::Ordering::Relaxed) as usize;
                log.write_at(8 + 8 * n, &msg)?;
                count.store(n as u64 + 1, std::sync::atomic::Ordering::Release);
            }
        }
        "flood" => {
            let n: usize = arg(2)?.parse()?;
            let msg = vec![7u8; arg(3)?.parse()?];
            for _ in 0..n {
                q.push(&msg)?;
            }
        }
        "flood-many" => {
            let n: usize = arg(2)?.parse()?;
            let msg = vec![7u8; arg(3)?.parse()?];
            let batch = vec![msg.as_slice(); 256];
            let mut left = n;
            while left > 0 {
                let k = left.min(256);
                q.push_many(&batch[..k])?;
                left -= k;
            }
        }
        "bench-many" => {
            let n: usize = arg(2)?.parse()?;
            let mut buf = vec![0u8; q.max_message()];
            let mut pop = |max: usize| {
                q.pop_each(
                    max,
                    &mut shmkit::sync::Wait::forever(),
                    |region, at, len, _, _| {
                        let _ = region.read_at(at, &mut buf[..len]);
                    },
                )
            };
            let mut got = pop(1)?;
            let start = Instant::now();
            while got < n {
                got += pop((n - got).min(256))?;
            }
            say(&format!("{}", start.elapsed().as_secs_f64()));
        }
        "bench" => {
            let n: usize = arg(2)?.parse()?;
            let mut buf = Vec::new();
            q.pop_into(&mut buf)?;
            let start = Instant::now();
            for _ in 1..n {
                q.pop_into(&mut buf)?;
            }
            say(&format!("{}", start.elapsed().as_secs_f64()));
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
