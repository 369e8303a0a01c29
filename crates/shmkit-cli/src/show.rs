//! `shmkit show NAME`: a shmkit object's state, a ShareableList item by
//! item, or a hexdump.

use serde::Serialize;
use shmkit::list::Value;

use crate::hexdump;
use crate::inspect::{self, ListCopy};
use crate::out::{self, Out, Quoted};

/// What `show` was asked for on the command line.
pub struct Args {
    pub name: String,
    pub hex: bool,
    pub offset: Option<u64>,
    pub length: Option<usize>,
    pub json: bool,
}

const DEFAULT_HEX: usize = 4096;

pub fn run(args: &Args) -> i32 {
    let hex = args.hex || args.offset.is_some() || args.length.is_some();
    if !hex {
        if let Some(status) = crate::show_array::show(&args.name, args.json) {
            return status;
        }
        // A queue is also an object: its own decoder says more.
        if let Some(rc) = crate::show_queue::show(&args.name, args.json) {
            return rc;
        }
        if let Some(status) = crate::show_object::show(&args.name, args.json) {
            return status;
        }
        match inspect::read_list(&args.name) {
            Ok(Some(list)) => return show_list(args, &list),
            Ok(None) => {}
            Err(e) => return out::fail(&e.to_string()),
        }
    }
    show_hex(args)
}

#[derive(Serialize)]
struct ListJson<'a> {
    name: &'a str,
    size: usize,
    kind: &'static str,
    format: String,
    items: Vec<ItemJson>,
}

#[derive(Serialize)]
struct ItemJson {
    index: usize,
    slot: usize,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    /// JSON's own form where there is one: `null` for None, and for bytes
    /// (see `repr` and `hex`) and non-finite floats.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Bool(b) => (*b).into(),
        Value::Str(s) => s.as_str().into(),
        Value::None | Value::Bytes(_) => serde_json::Value::Null,
    }
}

fn show_list(args: &Args, list: &ListCopy) -> i32 {
    let name = shmkit::name::validate(&args.name).unwrap_or(&args.name);
    let mut o = Out::new();
    if args.json {
        let items = list
            .items
            .iter()
            .map(|i| {
                let (type_name, format) = match &i.kind {
                    Ok((ty, format)) => (Some(ty.type_name()), Some(format.clone())),
                    Err(_) => (None, None),
                };
                match &i.value {
                    Ok(value) => ItemJson {
                        index: i.index,
                        slot: i.slot,
                        type_name,
                        format,
                        value: Some(json_value(value)),
                        repr: Some(value.repr()),
                        hex: match value {
                            Value::Bytes(b) => Some(b.iter().map(|b| format!("{b:02x}")).collect()),
                            _ => None,
                        },
                        error: None,
                    },
                    Err(e) => ItemJson {
                        index: i.index,
                        slot: i.slot,
                        type_name,
                        format,
                        value: None,
                        repr: None,
                        hex: None,
                        error: Some(e.clone()),
                    },
                }
            })
            .collect();
        let doc = ListJson {
            name,
            size: list.size,
            kind: "shareable_list",
            format: list.format(),
            items,
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => o.line(&text),
            Err(e) => return out::fail(&format!("cannot write JSON: {e}")),
        }
        return crate::EXIT_OK;
    }
    o.line(&format!(
        "{}: a ShareableList of {} items in {} bytes, format {}",
        Quoted::str(name),
        list.items.len(),
        list.size,
        shmkit::pyrepr::str_repr(&list.format())
    ));
    let rows: Vec<[String; 5]> = list
        .items
        .iter()
        .map(|i| {
            let (ty, format) = match &i.kind {
                Ok((ty, format)) => (ty.type_name().to_owned(), format.clone()),
                Err(_) => ("?".to_owned(), "?".to_owned()),
            };
            // A repr escapes what Python's does; what it leaves (format
            // characters such as a right-to-left override) is escaped here.
            let value = out::sanitize(&match &i.value {
                Ok(value) => value.repr(),
                Err(e) => format!("<unreadable: {e}>"),
            });
            [i.index.to_string(), ty, format, i.slot.to_string(), value]
        })
        .collect();
    let header = ["INDEX", "TYPE", "FORMAT", "SLOT", "VALUE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(out::width(cell));
        }
    }
    let render = |c: [&str; 5]| {
        format!(
            "{}  {}  {}  {}  {}",
            out::pad(c[0], widths[0], false),
            out::pad(c[1], widths[1], true),
            out::pad(c[2], widths[2], true),
            out::pad(c[3], widths[3], false),
            c[4],
        )
    };
    o.line(&render(header));
    for r in &rows {
        o.line(&render([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    crate::EXIT_OK
}

#[derive(Serialize)]
struct HexJson<'a> {
    name: &'a str,
    size: u64,
    kind: &'static str,
    offset: u64,
    hex: String,
}

fn show_hex(args: &Args) -> i32 {
    let offset = args.offset.unwrap_or(0);
    let want = args.length.unwrap_or(DEFAULT_HEX);
    let (bytes, size) = match inspect::read(&args.name, offset, want) {
        Ok(r) => r,
        Err(e) => return out::fail(&e.to_string()),
    };
    if args.length.is_some() && bytes.len() < want {
        return out::fail(
            &shmkit::Error::OutOfBounds {
                offset: offset as usize,
                len: want,
                size: size as usize,
            }
            .to_string(),
        );
    }
    let name = shmkit::name::validate(&args.name).unwrap_or(&args.name);
    let mut o = Out::new();
    if args.json {
        let doc = HexJson {
            name,
            size,
            kind: "bytes",
            offset,
            hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => o.line(&text),
            Err(e) => return out::fail(&format!("cannot write JSON: {e}")),
        }
        return crate::EXIT_OK;
    }
    o.line(&format!("{}: {size} bytes", Quoted::str(name)));
    for line in hexdump::lines(&bytes, offset as usize) {
        o.line(&line);
    }
    crate::EXIT_OK
}
