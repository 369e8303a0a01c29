//! `shmkit ls`: every segment, who uses it, and what it holds.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use serde::Serialize;
use shmkit::usage::{Processes, SegmentInfo, Usage, Users};

use crate::inspect::{self, Contents};

use crate::out::{self, Out};

#[derive(Serialize)]
struct Listing {
    segments: Vec<Entry>,
    /// Processes whose descriptors could not be read: while there are any,
    /// no segment is called leaked.
    unreadable_processes: Vec<u32>,
    /// Processes judged by their descriptors and locks only.
    maps_unreadable_processes: Vec<u32>,
}

#[derive(Serialize)]
struct Entry {
    name: String,
    size: u64,
    /// Octal, as `chmod` takes it: `"0600"`.
    mode: String,
    uid: u32,
    owner: Option<String>,
    gid: u32,
    /// Seconds since the epoch.
    created: f64,
    age_seconds: f64,
    /// `in_use`; `idle` (unused, but a live shmkit process tracks it);
    /// `leaked` (every user gone); or `unknown` (see `unreadable_processes`).
    state: &'static str,
    users: Vec<User>,
    locks: Vec<Lock>,
    /// The pids of the shmkit processes tracking it (never CPython's
    /// resource tracker, which cannot be read).
    tracked_by: Vec<i32>,
    /// The same processes, with their command names, and whether each is a
    /// shmkit manager (which unlinks the segment when it shuts down or its
    /// parent dies).
    trackers: Vec<Tracker>,
    holds: Holds,
}

#[derive(Serialize)]
struct User {
    pid: u32,
    /// As the kernel has it (`/proc/PID/comm`), any bytes that are not UTF-8
    /// replaced by U+FFFD.
    command: Option<String>,
    mapped: bool,
    open: bool,
    /// The command name's bytes, for the table.
    #[serde(skip)]
    raw_command: Option<Vec<u8>>,
}

#[derive(Serialize)]
struct Tracker {
    pid: i32,
    /// As for [`User::command`].
    command: Option<String>,
    manager: bool,
    /// The name the table shows: the command name, or `shmkit serve`.
    #[serde(skip)]
    label: Option<Vec<u8>>,
}

impl Tracker {
    fn of(pid: i32) -> Tracker {
        let comm = u32::try_from(pid).ok().and_then(out::command_of);
        let serve = u32::try_from(pid).is_ok_and(is_shmkit_serve);
        let manager = serve || comm.as_deref() == Some(MANAGER_PROGRAM.as_bytes());
        Tracker {
            pid,
            command: comm
                .as_deref()
                .map(|c| String::from_utf8_lossy(c).into_owned()),
            manager,
            label: if serve {
                Some(b"shmkit serve".to_vec())
            } else {
                comm
            },
        }
    }
}

/// The command name of the program that runs a Python
/// `SharedMemoryManager`'s server (`shmkit-manager`, shipped beside the
/// package). A manager that `start()` had to fork instead (one with an
/// initializer) keeps its parent's name and cannot be told from it.
const MANAGER_PROGRAM: &str = "shmkit-manager";

/// Whether `pid` runs `shmkit serve` (the `shmkit` program, or `python -m
/// shmkit`, followed by `serve`), from its command line.
fn is_shmkit_serve(pid: u32) -> bool {
    let Some(cmdline) = out::proc_file(pid, "cmdline") else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2).any(|pair| {
        let program = pair[0].rsplit(|&b| b == b'/').next().unwrap_or_default();
        program == b"shmkit" && pair[1] == b"serve"
    })
}

#[derive(Serialize)]
struct Lock {
    pid: Option<u32>,
    kind: String,
    access: String,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Holds {
    Empty,
    ShareableList {
        items: usize,
    },
    Semaphore,
    /// `shmkit.numpy`'s arrays: dtype and shape, as text.
    Array {
        array: String,
    },
    /// A shmkit object (lock, event, queue…): its kind's name.
    Object {
        object: &'static str,
    },
    Queue {
        items: u32,
        max_items: u64,
        used: u32,
        capacity: u64,
        #[serde(skip)]
        text: String,
    },
    Data,
    /// The segment could not be read (no permission).
    Unreadable {
        error: String,
    },
}

impl Holds {
    fn of(segment: &SegmentInfo) -> Holds {
        if let Some(array) = crate::show_array::holds(&segment.name) {
            return Holds::Array { array };
        }
        if let Some(Ok(q)) = crate::show_queue::state(&segment.name) {
            return Holds::Queue {
                items: q.len,
                max_items: q.max_items,
                used: q.used,
                capacity: q.capacity,
                text: crate::show_queue::holds_text(&q),
            };
        }
        match inspect::contents(&segment.name) {
            Ok(Contents::Empty) => Holds::Empty,
            Ok(Contents::ShareableList { len }) => Holds::ShareableList { items: len },
            Ok(Contents::Semaphore) => Holds::Semaphore,
            Ok(Contents::Object { kind }) => Holds::Object {
                object: kind.name(),
            },
            Ok(_) => Holds::Data,
            Err(e) => Holds::Unreadable {
                error: e.to_string(),
            },
        }
    }

    fn text(&self) -> String {
        match self {
            Holds::Empty => "empty".to_owned(),
            Holds::ShareableList { items } => format!("ShareableList[{items}]"),
            Holds::Semaphore => "semaphore".to_owned(),
            Holds::Array { array } => array.clone(),
            Holds::Object { object } => format!("shmkit {object}"),
            Holds::Queue { text, .. } => text.clone(),
            Holds::Data => "data".to_owned(),
            Holds::Unreadable { .. } => "?".to_owned(),
        }
    }
}

fn state_name(usage: Usage, live_trackers: &[i32]) -> &'static str {
    match usage {
        Usage::InUse => "in_use",
        Usage::Leaked if !live_trackers.is_empty() => "idle",
        Usage::Leaked => "leaked",
        Usage::Unknown => "unknown",
    }
}

fn users_of(users: &Users) -> Vec<User> {
    users
        .pids()
        .into_iter()
        .filter(|p| users.mapped_by.contains(p) || users.open_by.contains(p))
        .map(|pid| {
            let raw_command = out::command_of(pid);
            User {
                pid,
                command: raw_command
                    .as_deref()
                    .map(|c| String::from_utf8_lossy(c).into_owned()),
                mapped: users.mapped_by.contains(&pid),
                open: users.open_by.contains(&pid),
                raw_command,
            }
        })
        .collect()
}

pub fn run(json: bool, verbose: bool) -> i32 {
    let segments = match inspect::segments() {
        Ok(s) => s,
        Err(e) => return out::fail(&e.to_string()),
    };
    // Who uses what first, before this process opens anything to read it.
    let procs = Processes::scan(&segments);
    let tracked = inspect::tracked();
    let names = out::UserNames::new();
    let entries: Vec<Entry> = segments
        .iter()
        .map(|s| entry(s, &procs, &tracked, &names))
        .collect();
    let listing = Listing {
        segments: entries,
        unreadable_processes: procs.unreadable().to_vec(),
        maps_unreadable_processes: procs.maps_unreadable().to_vec(),
    };
    let mut o = Out::new();
    if json {
        match serde_json::to_string_pretty(&listing) {
            Ok(text) => o.line(&text),
            Err(e) => return out::fail(&format!("cannot write JSON: {e}")),
        }
    } else {
        table(&mut o, &listing);
        notes(&listing, verbose);
    }
    crate::EXIT_OK
}

fn entry(
    s: &SegmentInfo,
    procs: &Processes,
    tracked: &HashMap<String, Vec<i32>>,
    names: &out::UserNames,
) -> Entry {
    let users = procs.users(s);
    let created = s
        .created
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Entry {
        name: s.name.clone(),
        size: s.size,
        mode: format!("{:04o}", s.mode),
        uid: s.uid,
        owner: names.get(s.uid),
        gid: s.gid,
        created,
        age_seconds: s.age().as_secs_f64(),
        state: state_name(procs.usage(s), &out::live_trackers(tracked, &s.name)),
        users: users_of(&users),
        locks: users
            .locks
            .iter()
            .map(|l| Lock {
                pid: l.pid,
                kind: l.kind.clone(),
                access: l.access.clone(),
            })
            .collect(),
        tracked_by: tracked.get(&s.name).cloned().unwrap_or_default(),
        trackers: tracked
            .get(&s.name)
            .map(|pids| pids.iter().map(|&p| Tracker::of(p)).collect())
            .unwrap_or_default(),
        holds: Holds::of(s),
    }
}

/// `1234(python3)`, the command name [quoted](out::Quoted), or the pid
/// alone.
fn labelled(pid: impl std::fmt::Display, command: Option<&[u8]>) -> String {
    match command {
        Some(c) => format!("{pid}({})", out::Quoted(c)),
        None => pid.to_string(),
    }
}

fn table(o: &mut Out, listing: &Listing) {
    let header = [
        "NAME", "SIZE", "MODE", "OWNER", "AGE", "STATE", "USERS", "TRACKED", "HOLDS",
    ];
    let rows: Vec<[String; 9]> = listing
        .segments
        .iter()
        .map(|e| {
            // The raw command names, not the JSON's lossy ones: two names
            // that differ only in bytes that are not UTF-8 must look
            // different.
            let mut users: Vec<String> = e
                .users
                .iter()
                .map(|u| labelled(u.pid, u.raw_command.as_deref()))
                .collect();
            if users.is_empty() && !e.locks.is_empty() {
                users.push("locked".to_owned());
            }
            let trackers: Vec<String> = e
                .trackers
                .iter()
                .map(|t| labelled(t.pid, t.label.as_deref()))
                .collect();
            let join = |cells: Vec<String>| {
                if cells.is_empty() {
                    "-".to_owned()
                } else {
                    cells.join(",")
                }
            };
            [
                out::Quoted::str(&e.name).to_string(),
                out::human_size(e.size),
                e.mode.clone(),
                match &e.owner {
                    Some(owner) => out::Quoted::str(owner).to_string(),
                    None => e.uid.to_string(),
                },
                out::human_age(std::time::Duration::from_secs_f64(e.age_seconds)),
                e.state.replace('_', " "),
                join(users),
                join(trackers),
                e.holds.text(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(out::width(cell));
        }
    }
    let render = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                // Sizes right-aligned.
                line.push_str(&out::pad(cell, w, i != 1));
                line.push_str("  ");
            }
        }
        line
    };
    o.line(&render(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        o.line(&render(&cells));
    }
}

/// What the table cannot say. That some processes could not be inspected
/// is said whenever a segment's state is "unknown" because of it; the rest
/// only with `-v`.
fn notes(listing: &Listing, verbose: bool) {
    let unknown = listing.segments.iter().any(|e| e.state == "unknown");
    if !listing.unreadable_processes.is_empty() && (unknown || verbose) {
        out::warn(&format!(
            "note: {} processes could not be inspected (run as root to see them): \
             segments nobody was seen using are \"unknown\", not \"leaked\"",
            listing.unreadable_processes.len()
        ));
    }
    if !listing.maps_unreadable_processes.is_empty() && verbose {
        out::warn(&format!(
            "note: the mappings of {} could not be read; judged by descriptors and locks only",
            out::pid_list(&listing.maps_unreadable_processes)
        ));
    }
}
