//! `shmkit ls`: every segment, who uses it, and what it holds.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use serde::Serialize;
use shmkit::inspect::{self, Contents, Processes, Segment, Usage, Users};

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
    holds: Holds,
}

#[derive(Serialize)]
struct User {
    pid: u32,
    command: Option<String>,
    mapped: bool,
    open: bool,
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
    Data,
    /// The segment could not be read (no permission).
    Unreadable {
        error: String,
    },
}

impl Holds {
    fn of(segment: &Segment) -> Holds {
        match inspect::contents(&segment.name) {
            Ok(Contents::Empty) => Holds::Empty,
            Ok(Contents::ShareableList { len }) => Holds::ShareableList { items: len },
            Ok(Contents::Semaphore) => Holds::Semaphore,
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
        .map(|pid| User {
            pid,
            command: out::command_of(pid),
            mapped: users.mapped_by.contains(&pid),
            open: users.open_by.contains(&pid),
        })
        .collect()
}

pub fn run(json: bool) -> i32 {
    let segments = match inspect::segments() {
        Ok(s) => s,
        Err(e) => return out::fail(&e.to_string()),
    };
    // Who uses what first, before this process opens anything to read it.
    let procs = Processes::scan(&segments);
    let tracked = inspect::tracked();
    let names = out::user_names();
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
        notes(&listing);
    }
    crate::EXIT_OK
}

fn entry(
    s: &Segment,
    procs: &Processes,
    tracked: &HashMap<String, Vec<i32>>,
    names: &HashMap<u32, String>,
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
        owner: names.get(&s.uid).cloned(),
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
        holds: Holds::of(s),
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
            let mut users: Vec<String> = e
                .users
                .iter()
                .map(|u| match &u.command {
                    Some(c) => format!("{}({c})", u.pid),
                    None => u.pid.to_string(),
                })
                .collect();
            if users.is_empty() && !e.locks.is_empty() {
                users.push("locked".to_owned());
            }
            let tracked = if e.tracked_by.is_empty() {
                "-".to_owned()
            } else {
                e.tracked_by
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [
                e.name.clone(),
                out::human_size(e.size),
                e.mode.clone(),
                e.owner.clone().unwrap_or_else(|| e.uid.to_string()),
                out::human_age(std::time::Duration::from_secs_f64(e.age_seconds)),
                e.state.replace('_', " "),
                if users.is_empty() {
                    "-".to_owned()
                } else {
                    users.join(",")
                },
                tracked,
                e.holds.text(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else if i == 1 {
                // Sizes right-aligned.
                line.push_str(&format!("{cell:>w$}  "));
            } else {
                line.push_str(&format!("{cell:<w$}  "));
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

fn notes(listing: &Listing) {
    if !listing.unreadable_processes.is_empty() {
        out::warn(&format!(
            "note: {} processes could not be inspected (run as root to see them): \
             segments nobody was seen using are \"unknown\", not \"leaked\"",
            listing.unreadable_processes.len()
        ));
    }
    if !listing.maps_unreadable_processes.is_empty() {
        out::warn(&format!(
            "note: the mappings of {} could not be read; judged by descriptors and locks only",
            out::pid_list(&listing.maps_unreadable_processes)
        ));
    }
}
