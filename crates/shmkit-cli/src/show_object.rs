//! `shmkit show` for a segment marked by the [`shmkit::object`] header: one
//! place that turns each kind's state into lines (or JSON), so that a new
//! kind adds an arm here.

use serde::Serialize;
use shmkit::object::Kind;
use shmkit::sync::State;

use crate::inspect;
use crate::out::{self, Out, Quoted};

/// How many bytes of a segment the decoders look at.
const READ: usize = 512;

#[derive(Serialize)]
struct ObjectJson<'a> {
    name: &'a str,
    size: u64,
    kind: &'static str,
    #[serde(flatten)]
    state: serde_json::Value,
}

/// The process a kernel thread id belongs to (`/proc/TID/status`), if it
/// is alive and visible.
fn process_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The state's fields, as (label, JSON value) pairs in display order.
fn fields(state: &State) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    match state {
        State::Lock {
            owner_tid,
            depth,
            waiters,
            owner_died,
            ..
        } => {
            let pid = owner_tid.and_then(process_of);
            vec![
                ("held", json!(owner_tid.is_some())),
                ("owner_tid", json!(owner_tid)),
                ("owner_pid", json!(pid)),
                ("depth", json!(depth)),
                ("waiters", json!(waiters)),
                ("owner_died", json!(owner_died)),
            ]
        }
        State::Semaphore {
            value,
            bound,
            waiters,
            ..
        } => vec![
            ("value", json!(value)),
            ("bound", json!(bound)),
            ("waiters", json!(waiters)),
        ],
        State::Event { set, waiters } => {
            vec![("set", json!(set)), ("waiters", json!(waiters))]
        }
        State::Other { version, .. } => vec![("version", json!(version))],
        _ => Vec::new(),
    }
}

/// Shows the object `name` if its segment holds one: `Some(exit status)`,
/// or `None` for any other segment.
pub fn show(name: &str, json: bool) -> Option<i32> {
    let (bytes, size) = inspect::read(name, 0, READ).ok()?;
    let (kind, _) = shmkit::object::parse(&bytes)?;
    let state = shmkit::sync::describe(&bytes).unwrap_or(State::Other { kind, version: 0 });
    let name = shmkit::name::validate(name).unwrap_or(name);
    let kind_name = kind_label(kind);
    let fields = fields(&state);
    let mut o = Out::new();
    if json {
        let doc = ObjectJson {
            name,
            size,
            kind: kind_name,
            state: serde_json::Value::Object(
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ),
        };
        return Some(match serde_json::to_string_pretty(&doc) {
            Ok(text) => {
                o.line(&text);
                crate::EXIT_OK
            }
            Err(e) => out::fail(&format!("cannot write JSON: {e}")),
        });
    }
    o.line(&format!(
        "{}: shmkit {kind_name}, {size} bytes",
        Quoted::str(name)
    ));
    for (label, value) in fields {
        let shown = match value {
            serde_json::Value::Null => "-".to_owned(),
            v => v.to_string(),
        };
        o.line(&format!("  {label}: {shown}"));
    }
    Some(crate::EXIT_OK)
}

fn kind_label(kind: Kind) -> &'static str {
    kind.name()
}
