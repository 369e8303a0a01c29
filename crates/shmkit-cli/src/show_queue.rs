//! Queues (`shmkit::queue`) for `ls` and `show`: the control block is read
//! with `pread` (never mapped) and decoded by `shmkit::queue::describe`,
//! which checks every field.

use serde::Serialize;
use shmkit::object::{self, Kind};
use shmkit::queue::{self, State};

use crate::inspect;
use crate::out::{self, Out, Quoted};

/// The state of the queue in segment `name`; `None` if it holds no queue
/// (or cannot be read), `Some(Err)` for a queue whose control block makes
/// no sense.
pub fn state(name: &str) -> Option<Result<State, &'static str>> {
    let (bytes, _) = inspect::read(name, 0, queue::DESCRIBE_PREFIX).ok()?;
    if !matches!(object::parse(&bytes), Some((Kind::Queue, _))) {
        return None;
    }
    Some(queue::describe(&bytes))
}

/// What `ls` shows in its "holds" column for a queue.
pub fn holds_text(state: &State) -> String {
    let bound = if state.max_items == 0 {
        String::new()
    } else {
        format!("/{}", state.max_items)
    };
    format!(
        "queue[{}{bound}, {} of {}]",
        state.len,
        out::human_size(u64::from(state.used)),
        out::human_size(state.capacity)
    )
}

#[derive(Serialize)]
struct QueueJson<'a> {
    name: &'a str,
    kind: &'static str,
    #[serde(flatten)]
    state: StateJson,
}

#[derive(Serialize)]
struct StateJson {
    capacity: u64,
    max_items: u64,
    len: u32,
    used: u32,
    pushed: u32,
    popped: u32,
    done: u32,
    producer_lock_holder: Option<u32>,
    consumer_lock_holder: Option<u32>,
    producers_waiting: bool,
    consumers_waiting: bool,
    pending: bool,
    taking: bool,
}

/// `show NAME` of a queue: `None` if the segment holds none.
pub fn show(name: &str, json: bool) -> Option<i32> {
    let state = match state(name)? {
        Ok(s) => s,
        Err(e) => return Some(out::fail(&format!("queue {}: {e}", Quoted::str(name)))),
    };
    let shown = shmkit::name::validate(name).unwrap_or(name);
    let mut o = Out::new();
    if json {
        let doc = QueueJson {
            name: shown,
            kind: "queue",
            state: StateJson {
                capacity: state.capacity,
                max_items: state.max_items,
                len: state.len,
                used: state.used,
                pushed: state.pushed,
                popped: state.popped,
                done: state.done,
                producer_lock_holder: state.producer,
                consumer_lock_holder: state.consumer,
                producers_waiting: state.producers_waiting,
                consumers_waiting: state.consumers_waiting,
                pending: state.pending,
                taking: state.taking,
            },
        };
        o.line(&serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Some(crate::EXIT_OK);
    }
    let holder = |t: Option<u32>| t.map_or("free".to_owned(), |t| format!("held by thread {t}"));
    let bound = if state.max_items == 0 {
        "none (the ring bounds it)".to_owned()
    } else {
        state.max_items.to_string()
    };
    o.line(&format!("{}: queue", Quoted::str(shown)));
    o.line(&format!("  items:          {}", state.len));
    o.line(&format!("  item bound:     {bound}"));
    o.line(&format!(
        "  ring:           {} of {} bytes in use",
        state.used, state.capacity
    ));
    o.line(&format!(
        "  pushed/popped:  {} / {} (mod 2^32)",
        state.pushed, state.popped
    ));
    o.line(&format!(
        "  tasks done:     {} ({} unfinished)",
        state.done,
        state.pushed.wrapping_sub(state.done)
    ));
    o.line(&format!("  producers' lock: {}", holder(state.producer)));
    o.line(&format!("  consumers' lock: {}", holder(state.consumer)));
    o.line(&format!(
        "  sleepers:       producers {}, consumers {}",
        if state.producers_waiting {
            "may wait"
        } else {
            "none"
        },
        if state.consumers_waiting {
            "may wait"
        } else {
            "none"
        }
    ));
    if state.pending || state.taking {
        o.line(
            "  a producer or consumer stopped while moving a large item; \
             the next one on its side cleans up",
        );
    }
    Some(crate::EXIT_OK)
}
