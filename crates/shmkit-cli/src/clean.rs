//! `shmkit rm` and `shmkit gc`: unlinking, never under a live user.

use shmkit::usage::{Processes, Usage, Users};

use crate::inspect::{self, Removal};
use crate::out::{self, Out, Quoted};
use crate::{EXIT_ERROR, EXIT_OK, EXIT_REFUSED};

/// Why a segment was left alone, as one message.
fn refusal(name: &str, removal: &Removal) -> Option<String> {
    let name = Quoted::str(name);
    Some(match removal {
        Removal::Removed | Removal::RemovedInUse(_) => return None,
        Removal::InUse(users) => format!("{name}: {}; not removed", in_use(users)),
        Removal::Unknown { unreadable } => format!(
            "{name}: cannot tell whether it is in use: {} processes could not be \
             inspected (run as root); not removed",
            unreadable.len()
        ),
        Removal::Replaced => {
            format!("{name}: the name came to refer to another segment while it was checked; not removed")
        }
    })
}

fn in_use(users: &Users) -> String {
    let pids = users.pids();
    if !pids.is_empty() {
        return format!("in use by {}", out::pid_list(&pids));
    }
    if !users.locks.is_empty() {
        // The lock's taker is gone or in another pid namespace, but an open
        // file of the segment still holds the lock.
        return "in use (it is locked by a process that cannot be named)".to_owned();
    }
    "in use".to_owned()
}

/// `rm`: with `force`, unlinks even segments in use, and says who still
/// uses each.
pub fn rm(names: &[String], force: bool) -> i32 {
    let mut status = EXIT_OK;
    let mut bare: Vec<&str> = Vec::new();
    for name in names {
        match shmkit::name::validate(name) {
            // Two spellings of one name are one segment.
            Ok(b) if !bare.contains(&b) => bare.push(b),
            Ok(_) => {}
            Err(e) => status = out::fail(&e.to_string()),
        }
    }
    let mut o = Out::new();
    let mut refused = false;
    let results = if force {
        inspect::remove_in_use(&bare)
    } else {
        inspect::remove(&bare)
    };
    for (name, result) in bare.iter().zip(results) {
        let shown = Quoted::str(name);
        match result {
            Ok(Removal::Removed) => o.line(&format!("removed {shown}")),
            Ok(Removal::RemovedInUse(users)) => o.line(&format!(
                "removed {shown}, which was {}: they keep its memory until they let go of it",
                in_use(&users)
            )),
            Ok(other) => {
                refused = true;
                if let Some(message) = refusal(name, &other) {
                    out::warn(&message);
                }
            }
            Err(e) => status = out::fail(&e.to_string()),
        }
    }
    if status == EXIT_OK && refused {
        EXIT_REFUSED
    } else {
        status
    }
}

/// `gc`: unlinks the leaked segments among those named or prefixed (all
/// when none are), or only lists them (`dry_run`).
pub fn gc(names: &[String], prefixes: &[String], dry_run: bool, verbose: bool) -> i32 {
    let mut wanted: Vec<&str> = Vec::new();
    for name in names {
        match shmkit::name::validate(name) {
            Ok(b) => wanted.push(b),
            Err(e) => return out::fail(&e.to_string()),
        }
    }
    let prefixes: Vec<&str> = prefixes.iter().map(|p| p.trim_start_matches('/')).collect();
    let all = match inspect::segments() {
        Ok(s) => s,
        Err(e) => return out::fail(&e.to_string()),
    };
    let restricted = !wanted.is_empty() || !prefixes.is_empty();
    let considered: Vec<_> = all
        .into_iter()
        .filter(|s| {
            !restricted
                || wanted.contains(&s.name.as_str())
                || prefixes.iter().any(|p| s.name.starts_with(p))
        })
        .collect();
    let procs = Processes::scan(&considered);
    // Unused but tracked by a live shmkit process: idle, not leaked.
    let tracked = inspect::tracked();
    let leaked: Vec<_> = considered
        .iter()
        .filter(|s| {
            procs.usage(s) == Usage::Leaked && out::live_trackers(&tracked, &s.name).is_empty()
        })
        .collect();
    let unknown = considered
        .iter()
        .filter(|s| procs.usage(s) == Usage::Unknown)
        .count();
    if verbose && !procs.maps_unreadable().is_empty() {
        out::warn(&format!(
            "note: the mappings of {} could not be read; judged by descriptors and locks only",
            out::pid_list(procs.maps_unreadable())
        ));
    }
    if unknown > 0 {
        out::warn(&format!(
            "gc: left {unknown} segments alone that nobody was seen using: {} processes \
             could not be inspected (run as root)",
            procs.unreadable().len()
        ));
    }
    let mut o = Out::new();
    if dry_run {
        for s in &leaked {
            o.line(&format!(
                "would remove {} ({}, {} old)",
                Quoted::str(&s.name),
                out::human_size(s.size),
                out::human_age(s.age())
            ));
        }
        return EXIT_OK;
    }
    let names: Vec<&str> = leaked.iter().map(|s| s.name.as_str()).collect();
    let mut status = EXIT_OK;
    for (s, result) in leaked.iter().zip(inspect::remove(&names)) {
        match result {
            Ok(Removal::Removed) => o.line(&format!(
                "removed {} ({}, {} old)",
                Quoted::str(&s.name),
                out::human_size(s.size),
                out::human_age(s.age())
            )),
            // Used again, or replaced, since the first look: not leaked.
            Ok(other) => {
                if let Some(message) = refusal(&s.name, &other) {
                    out::warn(&format!("gc: {message}"));
                }
            }
            // Someone else removed it meanwhile: what gc wanted.
            Err(shmkit::Error::NotFound { .. }) => {}
            Err(e) => {
                out::warn(&format!("gc: {e}"));
                status = EXIT_ERROR;
            }
        }
    }
    status
}
