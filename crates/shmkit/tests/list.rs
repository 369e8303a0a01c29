//! ShareableList across real processes: CPython's stdlib in one, shmkit in
//! the other, both ways; and this test binary as its own child.
//!
//! The CPython tests run every interpreter found (`python3` on `PATH` and
//! pyenv's `3.x` versions, or the colon-separated list in
//! `SHMKIT_TEST_PYTHONS`); with none, they say so on stderr and pass.
//! Every segment a test makes is unlinked by a guard, even when it fails.

use std::path::PathBuf;
use std::process::Command;

use shmkit::list::raw::Layout;
use shmkit::list::{ItemType, ListError, ShareableList, Value, ValueRef};
use shmkit::{Error, SharedMemory};

mod common;
use common::{fresh_name, Unlink};

fn create(values: &[Value]) -> (ShareableList, Unlink) {
    let list = ShareableList::create(values).unwrap();
    let guard = Unlink(list.shm().name().to_owned());
    (list, guard)
}

fn list_error<T: std::fmt::Debug>(r: shmkit::Result<T>) -> ListError {
    match r {
        Err(Error::List(e)) => e,
        other => panic!("expected a list error, got {other:?}"),
    }
}

fn howdy() -> Vec<Value> {
    vec![
        Value::from("howdy"),
        Value::from(&b"HoWdY"[..]),
        Value::Float(-273.154),
        Value::Int(100),
        Value::None,
        Value::Bool(true),
        Value::Int(42),
    ]
}

const HOWDY_PY: &str = "['howdy', b'HoWdY', -273.154, 100, None, True, 42]";

#[test]
fn create_open_and_use() {
    let (list, _guard) = create(&howdy());
    assert_eq!(list.len(), 7);
    assert_eq!(list.shm().size(), 191);
    assert_eq!(list.format().unwrap(), "8s8sdqxxxxxx?xxxxxxxx?q");

    let other = ShareableList::open(list.shm().name()).unwrap();
    assert_eq!(other.to_vec().unwrap(), howdy());
    let backwards: Vec<Value> = other.iter().rev().map(Result::unwrap).collect();
    assert_eq!(backwards[0], Value::Int(42));
    assert_eq!(other.iter().len(), 7);

    other.set(3, "abc").unwrap();
    other.set_f64(6, 1.5).unwrap();
    assert_eq!(list.get(3).unwrap(), Value::from("abc"));
    assert_eq!(list.get_f64(-1).unwrap(), 1.5);
    assert_eq!(list.item_type(3).unwrap(), ItemType::Str { width: 8 });
    assert_eq!(list.item_format(-1).unwrap(), "d");

    // Python's ==: True == 1, 1.5 == 1.5; str never equals bytes.
    list.set(0, 1).unwrap();
    assert_eq!(list.count(1).unwrap(), 2);
    assert_eq!(list.index(1.0).unwrap(), Some(0));
    assert_eq!(list.index(&b"abc"[..]).unwrap(), None);
    assert_eq!(list.index("abc").unwrap(), Some(3));
    assert_eq!(list.count(()).unwrap(), 1);

    let shm = other.into_shm();
    assert_eq!(shm.name(), list.shm().name());
}

#[test]
fn empty_list() {
    let (list, _guard) = create(&[]);
    assert!(list.is_empty());
    assert_eq!(list.shm().size(), 16);
    assert_eq!(list.shm().read_vec(0, 16).unwrap(), [0u8; 16]);
    assert_eq!(list.format().unwrap(), "");
    assert_eq!(list.count(()).unwrap(), 0);
    assert_eq!(list.index(()).unwrap(), None);
    assert!(ShareableList::open(list.shm().name()).unwrap().is_empty());
}

#[test]
fn named_create_refuses_a_taken_name_and_open_a_missing_one() {
    let (name, _guard) = fresh_name("list");
    let list = ShareableList::create_named(&name, &[Value::Int(1)]).unwrap();
    assert_eq!(list.shm().name(), name);
    assert!(matches!(
        ShareableList::create_named(&name, &[Value::Int(2)]),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(list.get_i64(0).unwrap(), 1);
    list.shm().unlink().unwrap();
    assert!(matches!(
        ShareableList::open(&name),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn bad_values_create_nothing() {
    let (name, _guard) = fresh_name("list");
    let bad = [ValueRef::Int(1), ValueRef::Bytes(b"abc\0")];
    assert_eq!(
        list_error(ShareableList::create_named(&name, &bad)),
        ListError::TrailingNul {
            index: 1,
            type_name: "bytes"
        }
    );
    assert!(!shmkit::exists(&name));
}

#[test]
fn open_refuses_segments_that_are_not_lists() {
    let shm = SharedMemory::create(64).unwrap();
    let _guard = Unlink(shm.name().to_owned());
    shm.write_at(0, &1000i64.to_ne_bytes()).unwrap();
    assert!(matches!(
        list_error(ShareableList::open(shm.name())),
        ListError::Corrupt { .. }
    ));
}

#[test]
fn typed_accessors() {
    let (list, _guard) = create(&[Value::Int(0), Value::Float(0.0), Value::Bool(true)]);
    for i in 0..1000 {
        list.set_i64(0, i).unwrap();
        assert_eq!(list.get_i64(0).unwrap(), i);
    }
    list.set_f64(1, f64::NAN).unwrap();
    assert!(list.get_f64(1).unwrap().is_nan());
    assert_eq!(
        list_error(list.get_i64(2)),
        ListError::WrongType {
            index: 2,
            expected: "int",
            found: "bool"
        }
    );
    assert!(list.get_f64(0).is_err()); // no conversion
    list.set_f64(0, 2.0).unwrap(); // a type change, as `set` would
    assert_eq!(list.get(0).unwrap(), Value::Float(2.0));
    assert_eq!(
        list_error(list.set_i64(-4, 0)),
        ListError::IndexOutOfRange { index: -4, len: 3 }
    );
}

// ---------------------------------------------------------------------------
// CPython interop

struct Python {
    exe: PathBuf,
    version: (u32, u32),
}

/// The interpreters to test against, one per version.
fn pythons() -> Vec<Python> {
    let candidates: Vec<PathBuf> = match std::env::var_os("SHMKIT_TEST_PYTHONS") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => {
            let mut c = vec![PathBuf::from("python3")];
            let root = std::env::var_os("PYENV_ROOT")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
            if let Some(Ok(dir)) = root.map(|r| std::fs::read_dir(r.join("versions"))) {
                let mut found: Vec<PathBuf> = dir
                    .filter_map(|e| e.ok())
                    .map(|e| e.path().join("bin/python3"))
                    .collect();
                found.sort();
                c.extend(found);
            }
            c
        }
    };
    let mut out: Vec<Python> = Vec::new();
    for exe in candidates {
        let Ok(o) = Command::new(&exe)
            .args(["-c", "import sys; print(*sys.version_info[:2])"])
            .output()
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&o.stdout);
        let mut it = text.split_whitespace().map(|s| s.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (it.next(), it.next()) {
            if !out.iter().any(|p| p.version == (major, minor)) {
                out.push(Python {
                    exe,
                    version: (major, minor),
                });
            }
        }
    }
    out
}

/// The interpreters whose ShareableList has the 3.9+ layout.
fn modern_pythons() -> Vec<Python> {
    let found: Vec<Python> = pythons()
        .into_iter()
        .filter(|p| p.version >= (3, 9))
        .collect();
    if found.is_empty() {
        eprintln!("no CPython 3.9+ found: CPython interop not tested");
    } else {
        let versions: Vec<_> = found.iter().map(|p| p.version).collect();
        eprintln!("testing against CPython {versions:?}");
    }
    found
}

impl Python {
    /// Runs `script` with `args`; panics with its stderr if it fails.
    fn run(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(&self.exe)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run python");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "python {:?} failed:\n{stderr}",
            self.version
        );
        // A resource_tracker warning means a segment was unlinked or leaked
        // behind the test's back.
        assert!(
            stderr.is_empty(),
            "python {:?} stderr:\n{stderr}",
            self.version
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Python prologue: attach or create, then tell this process's resource
/// tracker to leave the segment alone (gh-82300): the Rust side unlinks it.
const PY_PROLOGUE: &str = "
import sys
from multiprocessing import shared_memory, resource_tracker
def untrack(sl):
    resource_tracker.unregister(sl.shm._name, 'shared_memory')
";

/// Values that CPython and shmkit lay out identically, with the Python
/// literal that makes them.
fn interop_values() -> (Vec<Value>, &'static str) {
    let values = vec![
        Value::from(""),
        Value::from("1234567"),
        Value::from("12345678"),
        Value::from("a\0b"),
        Value::Bytes(vec![]),
        Value::Bytes(b"\0\x01\xff".to_vec()),
        Value::Bytes(vec![b'z'; 100]),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::Int(-1),
        Value::Float(f64::INFINITY),
        Value::Float(-0.0),
        Value::Float(1e300),
        Value::Bool(false),
        Value::Bool(true),
        Value::None,
    ];
    let literal = "['', '1234567', '12345678', 'a\\x00b', b'', b'\\x00\\x01\\xff', b'z'*100, \
                   -2**63, 2**63-1, -1, float('inf'), -0.0, 1e300, False, True, None]";
    (values, literal)
}

#[test]
fn rust_reads_lists_cpython_made_byte_for_byte() {
    let (values, literal) = interop_values();
    let expected = Layout::encode(&values.iter().map(ValueRef::from).collect::<Vec<_>>()).unwrap();
    for py in modern_pythons() {
        let (name, _guard) = fresh_name("list");
        let script = format!(
            "{PY_PROLOGUE}
sl = shared_memory.ShareableList({literal}, name=sys.argv[1])
untrack(sl)
print(sl.format)
sl.shm.close()
"
        );
        let out = py.run(&script, &[&name]);
        let list = ShareableList::open(&name).unwrap();
        assert_eq!(list.to_vec().unwrap(), values, "python {:?}", py.version);
        assert_eq!(
            list.format().unwrap(),
            out.trim_end(),
            "python {:?}",
            py.version
        );
        let bytes = list.shm().read_vec(0, list.shm().size()).unwrap();
        assert_eq!(bytes, expected, "python {:?}", py.version);
    }
}

#[test]
fn cpython_reads_and_writes_lists_rust_made() {
    for py in modern_pythons() {
        let (name, _guard) = fresh_name("list");
        let list = ShareableList::create_named(&name, &howdy()).unwrap();
        let script = format!(
            "{PY_PROLOGUE}
sl = shared_memory.ShareableList(name=sys.argv[1])
untrack(sl)
print(repr(list(sl)))
print(sl.format)
sl[0] = 'hi'
sl[2] = 7
sl[3] = b'\\x01'
sl[4] = 2.5
sl[-1] = None
sl.shm.close()
"
        );
        let out = py.run(&script, &[&name]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [HOWDY_PY, "8s8sdqxxxxxx?xxxxxxxx?q"],
            "python {:?}",
            py.version
        );
        assert_eq!(
            list.to_vec().unwrap(),
            [
                Value::from("hi"),
                Value::from(&b"HoWdY"[..]),
                Value::Int(7),
                Value::from(&b"\x01"[..]),
                Value::Float(2.5),
                Value::Bool(true),
                Value::None,
            ],
            "python {:?}",
            py.version
        );
        assert_eq!(list.format().unwrap(), "8s8sq8sdxxxxxxx?xxxxxx?x");
    }
}

#[test]
fn multibyte_text_survives_shmkit_and_is_cut_by_cpython() {
    for py in modern_pythons() {
        // shmkit sizes by UTF-8 bytes; CPython reads the whole text back.
        let (name, _guard) = fresh_name("list");
        let list = ShareableList::create_named(
            &name,
            &[
                Value::from("ééééé"),
                Value::from("€€€€€"),
                Value::from("名"),
            ],
        )
        .unwrap();
        assert_eq!(list.format().unwrap(), "16s16s8s");
        let out = py.run(
            &format!(
                "{PY_PROLOGUE}
sl = shared_memory.ShareableList(name=sys.argv[1])
untrack(sl)
print(ascii(list(sl)))
sl[2] = 'ü' * 4
sl.shm.close()
"
            ),
            &[&name],
        );
        assert_eq!(
            out.trim_end(),
            "['\\xe9\\xe9\\xe9\\xe9\\xe9', '\\u20ac\\u20ac\\u20ac\\u20ac\\u20ac', '\\u540d']",
            "python {:?}",
            py.version
        );
        assert_eq!(list.get(2).unwrap(), Value::from("üüüü"));

        // CPython sizes by characters: it keeps 4 of 5 'é', and cuts a '€'.
        let (name, _guard) = fresh_name("list");
        py.run(
            &format!(
                "{PY_PROLOGUE}
sl = shared_memory.ShareableList(['é' * 5, '€' * 5], name=sys.argv[1])
untrack(sl)
sl.shm.close()
"
            ),
            &[&name],
        );
        let list = ShareableList::open(&name).unwrap();
        assert_eq!(list.get(0).unwrap(), Value::from("éééé"));
        assert!(matches!(
            list_error(list.get(1)),
            ListError::InvalidUtf8 { index: 1, .. }
        ));
    }
}

#[test]
fn cpython_strips_trailing_nuls_and_shmkit_refuses_to_write_them() {
    for py in modern_pythons() {
        let (name, _guard) = fresh_name("list");
        py.run(
            &format!(
                "{PY_PROLOGUE}
sl = shared_memory.ShareableList([b'abc\\x00', 'x\\x00', b'\\x00\\x00'], name=sys.argv[1])
untrack(sl)
sl.shm.close()
"
            ),
            &[&name],
        );
        let list = ShareableList::open(&name).unwrap();
        // What CPython itself reads back: the NULs are gone.
        assert_eq!(
            list.to_vec().unwrap(),
            [
                Value::from(&b"abc"[..]),
                Value::from("x"),
                Value::Bytes(vec![])
            ]
        );
        let before = list.shm().read_vec(0, list.shm().size()).unwrap();
        assert!(matches!(
            list_error(list.set(0, &b"abc\0"[..])),
            ListError::TrailingNul { index: 0, .. }
        ));
        assert_eq!(list.shm().read_vec(0, list.shm().size()).unwrap(), before);
    }
}

#[test]
fn python_38_lists_are_recognised() {
    let Some(py) = pythons().into_iter().find(|p| p.version == (3, 8)) else {
        eprintln!("no CPython 3.8 found: 3.8 layout detection not tested against it");
        return;
    };
    for literal in ["['howdy', b'HoWdY', -273.154, 100, None, True, 42]", "[]"] {
        let (name, _guard) = fresh_name("list");
        py.run(
            &format!(
                "{PY_PROLOGUE}
sl = shared_memory.ShareableList({literal}, name=sys.argv[1])
untrack(sl)
sl.shm.close()
"
            ),
            &[&name],
        );
        assert_eq!(
            list_error(ShareableList::open(&name)),
            ListError::Python38Layout,
            "{literal}"
        );
    }
}

// ---------------------------------------------------------------------------
// Rust to Rust, in two processes

const CHILD_ENV: &str = "SHMKIT_LIST_TEST_CHILD";

/// The child's half of `a_child_process_sees_and_makes_writes`, run only
/// by it (`--ignored --exact`).
#[test]
#[ignore = "child role for a_child_process_sees_and_makes_writes"]
fn list_child_entry() {
    let name = std::env::var(CHILD_ENV).expect("run by a_child_process_sees_and_makes_writes");
    let list = ShareableList::open(&name).unwrap();
    assert_eq!(list.get(0).unwrap(), Value::from("from parent"));
    list.set(0, "from the child").unwrap();
    list.set_i64(1, list.get_i64(1).unwrap() + 1).unwrap();
    list.set(2, ()).unwrap();
}

#[test]
fn a_child_process_sees_and_makes_writes() {
    let (list, _guard) = create(&[
        Value::from("xxxxxxxxxxxxxxxxxxxx"),
        Value::Int(41),
        Value::Float(0.0),
    ]);
    list.set(0, "from parent").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "list_child_entry",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, list.shm().name())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        list.to_vec().unwrap(),
        [Value::from("from the child"), Value::Int(42), Value::None]
    );
}

// ---------------------------------------------------------------------------
// The fuzz target's body, on stable Rust

#[path = "../../../fuzz/common/list_decode.rs"]
mod list_decode;

mod fuzz_body {
    use super::list_decode;
    use proptest::prelude::*;
    use shmkit::list::raw::Layout;
    use shmkit::list::{Value, ValueRef};

    fn image(values: &[Value]) -> Vec<u8> {
        Layout::encode(&values.iter().map(ValueRef::from).collect::<Vec<_>>()).unwrap()
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::None),
            "[a-zé€]{0,12}".prop_map(Value::Str),
            proptest::collection::vec(1u8.., 0..20).prop_map(Value::Bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            list_decode::run(&data);
        }

        #[test]
        fn on_damaged_lists(
            values in proptest::collection::vec(value(), 0..12),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut data = image(&values);
            for (at, b) in damage {
                let at = at % data.len();
                data[at] = b;
            }
            // Sometimes cut the segment short, sometimes pad it.
            match cut % 4 {
                0 => data.truncate(cut / 4 % (data.len() + 1)),
                1 => data.extend(std::iter::repeat_n(0xa5, cut / 4 % 64)),
                _ => {}
            }
            list_decode::run(&data);
        }
    }
}

/// Bindings hold lists across threads (and PyO3 classes must be `Send`).
#[test]
fn lists_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ShareableList>();
    check::<shmkit::list::raw::Layout>();
}
