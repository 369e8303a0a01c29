//! The subset of Python's pickle format that the manager protocol speaks:
//! [`loads`] reads protocols 2–5 for plain data, [`dumps`] writes protocol 4
//! as CPython 3.8–3.13's `ForkingPickler.dumps` does.
//!
//! Written by hand: no maintained crate both reads protocols 2–5 and writes
//! the protocol 4 frames that CPython's `pickle.loads` expects, and the
//! manager needs only the opcodes for `None`, `bool`, `int`, `float`, `str`,
//! `bytes`, `tuple`, `list` and `dict`.
//!
//! Pickles come from a socket, so the reader is defensive: every length is
//! checked against the bytes that are really there before anything is
//! allocated, opcodes that build other objects (`GLOBAL`, `REDUCE`, …) are
//! refused rather than run, and objects shared through the memo are counted
//! each time they are used, so that a small pickle cannot expand into a huge
//! value ("billion laughs") or a recursive one.
//!
//! Everything the reader builds is paid for from one budget, fixed by the
//! pickle's length ([`decode_budget`]): the values under construction, the
//! stack, the memo, and the finished value. A pickle of cheap opcodes that
//! each build a value (a megabyte of `None`s appended to a list, a chain of
//! `TUPLE1`) would otherwise cost a hundred times its size; past the budget
//! it is refused with [`PickleProblem::TooLarge`] instead. The charges are
//! the real sizes of what is kept, vectors by their capacity, so that the
//! budget bounds what the decoder really allocates (the `manager_decode`
//! fuzz target measures it).

use std::collections::HashMap;
use std::fmt;

use crate::pyrepr::{bytes_repr, float_repr, str_repr};

/// A Python value of one of the types the manager protocol carries.
///
/// ```
/// use shmkit::manager::pickle::{dumps, loads, PyValue};
///
/// let request = PyValue::Tuple(vec![
///     PyValue::None,
///     "track_segment".into(),
///     PyValue::Tuple(vec!["psm_abc".into()]),
///     PyValue::Dict(vec![]),
/// ]);
/// let bytes = dumps(&request);
/// assert_eq!(loads(&bytes)?, request);
/// assert_eq!(request.repr(), "(None, 'track_segment', ('psm_abc',), {})");
/// # Ok::<(), shmkit::manager::PickleError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An `int` that fits 64 bits; larger ones are refused when read.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A `tuple`.
    Tuple(Vec<PyValue>),
    /// A `list`.
    List(Vec<PyValue>),
    /// A `dict`, as its pairs in insertion order. A pickle that sets one key
    /// twice (CPython's pickler never writes one) keeps both pairs;
    /// [`PyValue::get`] finds the last, as Python would.
    Dict(Vec<(PyValue, PyValue)>),
}

impl PyValue {
    /// The name of the value's Python type, for messages such as CPython's
    /// `TypeError`s.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::Tuple(_) => "tuple",
            PyValue::List(_) => "list",
            PyValue::Dict(_) => "dict",
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if this is a `tuple` or a `list`.
    pub fn as_sequence(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::Tuple(items) | PyValue::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value under `key`, if this is a `dict` that has it (the last
    /// pair wins, as in Python).
    ///
    /// ```
    /// use shmkit::manager::pickle::PyValue;
    /// let d = PyValue::Dict(vec![("a".into(), 1.into()), ("a".into(), 2.into())]);
    /// assert_eq!(d.get(&"a".into()), Some(&PyValue::Int(2)));
    /// ```
    pub fn get(&self, key: &PyValue) -> Option<&PyValue> {
        match self {
            PyValue::Dict(pairs) => pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's `repr()` of the value, as a traceback would show it.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            PyValue::None => out.push_str("None"),
            PyValue::Bool(true) => out.push_str("True"),
            PyValue::Bool(false) => out.push_str("False"),
            PyValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            PyValue::Float(f) => out.push_str(&float_repr(*f)),
            PyValue::Str(s) => out.push_str(&str_repr(s)),
            PyValue::Bytes(b) => out.push_str(&bytes_repr(b)),
            PyValue::Tuple(items) => {
                out.push('(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_repr(out);
                }
                if items.len() == 1 {
                    out.push(',');
                }
                out.push(')');
            }
            PyValue::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_repr(out);
                }
                out.push(']');
            }
            PyValue::Dict(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }

    fn is_hashable(&self) -> bool {
        match self {
            PyValue::List(_) | PyValue::Dict(_) => false,
            PyValue::Tuple(items) => items.iter().all(PyValue::is_hashable),
            _ => true,
        }
    }
}

impl fmt::Display for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr())
    }
}

impl From<&str> for PyValue {
    fn from(s: &str) -> Self {
        PyValue::Str(s.to_owned())
    }
}

impl From<String> for PyValue {
    fn from(s: String) -> Self {
        PyValue::Str(s)
    }
}

impl From<&[u8]> for PyValue {
    fn from(b: &[u8]) -> Self {
        PyValue::Bytes(b.to_vec())
    }
}

impl From<i64> for PyValue {
    fn from(i: i64) -> Self {
        PyValue::Int(i)
    }
}

impl From<f64> for PyValue {
    fn from(f: f64) -> Self {
        PyValue::Float(f)
    }
}

impl From<bool> for PyValue {
    fn from(b: bool) -> Self {
        PyValue::Bool(b)
    }
}

impl From<()> for PyValue {
    fn from(_: ()) -> Self {
        PyValue::None
    }
}

// ---------------------------------------------------------------------------
// Opcodes (names as in CPython's `pickletools`)

const MARK: u8 = b'(';
const STOP: u8 = b'.';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const EMPTY_LIST: u8 = b']';
const APPENDS: u8 = b'e';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const EMPTY_DICT: u8 = b'}';
const PROTO: u8 = 0x80;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// The newest protocol CPython (3.8+) writes and this reader accepts.
pub const HIGHEST_PROTOCOL: u8 = 5;

/// Nesting deeper than this is refused on reading. CPython's own recursion
/// limit (1000) is in the same range; manager messages nest three deep.
pub const MAX_DEPTH: usize = 500;

/// Bytes of decoder memory allowed per byte of pickle; see [`decode_budget`].
pub const BUDGET_PER_BYTE: usize = 16;

/// Bytes of decoder memory any pickle may use, however short.
pub const BUDGET_BASE: usize = 64 << 10;

/// The most memory [`loads`] spends on a pickle of `len` bytes (beyond the
/// pickle itself): [`BUDGET_PER_BYTE`] per byte plus [`BUDGET_BASE`].
///
/// Sixteen bytes per byte leaves room for what the manager protocol
/// really carries: a list of segment names costs about nine bytes per byte
/// of pickle once read. CPython's own unpickler spends more than that on
/// some pickles (a tuple per `TUPLE1` byte), so no pickle CPython writes for
/// a manager is refused for its size.
///
/// ```
/// use shmkit::manager::pickle::{decode_budget, loads, PickleProblem};
///
/// assert_eq!(decode_budget(1 << 20), (16 << 20) + (64 << 10));
/// // A list of a million `None`s in about a megabyte: refused, cheaply.
/// let mut data = b"](".to_vec();
/// data.extend(std::iter::repeat_n(b'N', 1 << 20));
/// data.extend_from_slice(b"e.");
/// assert_eq!(loads(&data).unwrap_err().problem, PickleProblem::TooLarge);
/// ```
pub fn decode_budget(len: usize) -> usize {
    len.saturating_mul(BUDGET_PER_BYTE)
        .saturating_add(BUDGET_BASE)
}

// ---------------------------------------------------------------------------
// Errors

/// Why a pickle could not be read; carried by
/// [`ManagerError::Pickle`](super::ManagerError::Pickle). Bindings raise
/// `pickle.UnpicklingError` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot unpickle: {problem} (at byte {offset})")]
pub struct PickleError {
    /// Where in the pickle the problem was found.
    pub offset: usize,
    /// What the problem is.
    pub problem: PickleProblem,
}

/// What is wrong with a pickle; see [`PickleError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleProblem {
    /// The data ends inside an opcode, or before `STOP`.
    #[error("pickle data was truncated")]
    Truncated,
    /// An opcode outside the supported subset (for instance `GLOBAL` or
    /// `REDUCE`, which would build arbitrary objects).
    #[error("unsupported opcode {opcode:#04x} ({:?})", char::from(*opcode))]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
    },
    /// A `PROTO` above [`HIGHEST_PROTOCOL`].
    #[error("unsupported pickle protocol: {0}")]
    UnsupportedProtocol(u8),
    /// An opcode needed more values than the stack holds above its mark.
    #[error("unpickling stack underflow")]
    StackUnderflow,
    /// `TUPLE`, `APPENDS` or `SETITEMS` without a `MARK` before it.
    #[error("could not find MARK")]
    NoMark,
    /// `STOP` with a `MARK` on top of the stack.
    #[error("a MARK is on top of the stack at STOP")]
    MarkAtStop,
    /// A memo key that no `PUT` defined.
    #[error("memo value not found at index {0}")]
    MissingMemo(u32),
    /// `APPEND(S)` to something that is not a list, or `SETITEM(S)` to
    /// something that is not a dict.
    #[error("{opcode} applied to a {found}")]
    WrongTarget {
        /// The opcode's name.
        opcode: &'static str,
        /// The Python type it found.
        found: &'static str,
    },
    /// `SETITEMS` with an odd number of values.
    #[error("odd number of items for SETITEMS")]
    OddItems,
    /// A dict key that Python could not hash (a list or a dict).
    #[error("unhashable type: '{0}'")]
    Unhashable(&'static str),
    /// An `int` that does not fit 64 bits.
    #[error("int too large: {bytes} bytes")]
    IntTooLarge {
        /// The length of its encoding.
        bytes: u64,
    },
    /// A `LONG4` with a negative length.
    #[error("LONG pickle has negative byte count")]
    NegativeLength,
    /// A `str` whose bytes are not UTF-8 (CPython pickles lone surrogates,
    /// which Rust strings cannot hold).
    #[error("str is not valid UTF-8")]
    InvalidUtf8,
    /// A `FRAME` longer than the data that follows it.
    #[error("frame of {0} bytes runs past the end of the data")]
    BadFrame(u64),
    /// Values nest deeper than [`MAX_DEPTH`].
    #[error("values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A list, tuple or dict that contains itself.
    #[error("recursive structure")]
    Recursive,
    /// Reading the pickle would take more memory than its size allows
    /// ([`decode_budget`]), for instance through values shared by the memo.
    #[error("the pickle expands to too large a value")]
    TooLarge,
}

// ---------------------------------------------------------------------------
// Writing

/// Pickles `value` with protocol 4, as `pickle.dumps(value, 4)` does in
/// CPython 3.8–3.13: one `FRAME` around the whole body (left out for bodies
/// under 4 bytes), and a `MEMOIZE` after every `str`, `bytes`, non-empty
/// `tuple`, `list` and `dict`.
///
/// ```
/// use shmkit::manager::pickle::{dumps, PyValue};
/// // ('#RETURN', None), byte for byte as CPython's manager sends it.
/// let reply = PyValue::Tuple(vec!["#RETURN".into(), PyValue::None]);
/// let hex: String = dumps(&reply).iter().map(|b| format!("{b:02x}")).collect();
/// assert_eq!(hex, "8004950e000000000000008c072352455455524e944e86942e");
/// ```
pub fn dumps(value: &PyValue) -> Vec<u8> {
    let mut out = vec![PROTO, 4, FRAME, 0, 0, 0, 0, 0, 0, 0, 0];
    write_value(&mut out, value);
    out.push(STOP);
    let body = out.len() - 11;
    if body < 4 {
        out.drain(2..11);
    } else {
        out[3..11].copy_from_slice(&(body as u64).to_le_bytes());
    }
    out
}

fn write_value(out: &mut Vec<u8>, value: &PyValue) {
    match value {
        PyValue::None => out.push(NONE),
        PyValue::Bool(true) => out.push(NEWTRUE),
        PyValue::Bool(false) => out.push(NEWFALSE),
        PyValue::Int(i) => write_int(out, *i),
        PyValue::Float(f) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Str(s) => {
            write_sized(out, s.as_bytes(), SHORT_BINUNICODE, BINUNICODE, BINUNICODE8);
            out.push(MEMOIZE);
        }
        PyValue::Bytes(b) => {
            write_sized(out, b, SHORT_BINBYTES, BINBYTES, BINBYTES8);
            out.push(MEMOIZE);
        }
        PyValue::Tuple(items) => {
            match items.len() {
                0 => {
                    out.push(EMPTY_TUPLE);
                    return;
                }
                n @ 1..=3 => {
                    items.iter().for_each(|item| write_value(out, item));
                    out.push([TUPLE1, TUPLE2, TUPLE3][n - 1]);
                }
                _ => {
                    out.push(MARK);
                    items.iter().for_each(|item| write_value(out, item));
                    out.push(TUPLE);
                }
            }
            out.push(MEMOIZE);
        }
        PyValue::List(items) => {
            out.extend_from_slice(&[EMPTY_LIST, MEMOIZE]);
            for batch in items.chunks(BATCH) {
                if let [item] = batch {
                    write_value(out, item);
                    out.push(APPEND);
                } else {
                    out.push(MARK);
                    batch.iter().for_each(|item| write_value(out, item));
                    out.push(APPENDS);
                }
            }
        }
        PyValue::Dict(pairs) => {
            out.extend_from_slice(&[EMPTY_DICT, MEMOIZE]);
            for batch in pairs.chunks(BATCH) {
                if let [(k, v)] = batch {
                    write_value(out, k);
                    write_value(out, v);
                    out.push(SETITEM);
                } else {
                    out.push(MARK);
                    for (k, v) in batch {
                        write_value(out, k);
                        write_value(out, v);
                    }
                    out.push(SETITEMS);
                }
            }
        }
    }
}

/// CPython appends and sets items in batches of this many.
const BATCH: usize = 1000;

fn write_int(out: &mut Vec<u8>, i: i64) {
    if (0..=0xff).contains(&i) {
        out.extend_from_slice(&[BININT1, i as u8]);
    } else if (0..=0xffff).contains(&i) {
        out.push(BININT2);
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if let Ok(small) = i32::try_from(i) {
        out.push(BININT);
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        // The shortest little-endian two's complement, as CPython's
        // `encode_long`: drop high bytes while the sign survives.
        let bytes = i.to_le_bytes();
        let mut n = 8;
        while n > 1 {
            let top = bytes[n - 1];
            let next_sign = bytes[n - 2] & 0x80;
            if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[LONG1, n as u8]);
        out.extend_from_slice(&bytes[..n]);
    }
}

fn write_sized(out: &mut Vec<u8>, data: &[u8], short: u8, long: u8, huge: u8) {
    if let Ok(n) = u8::try_from(data.len()) {
        out.extend_from_slice(&[short, n]);
    } else if let Ok(n) = u32::try_from(data.len()) {
        out.push(long);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(huge);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(data);
}

// ---------------------------------------------------------------------------
// Reading

/// Unpickles `data`, which must hold one pickle of the supported subset.
/// Bytes after its `STOP` are ignored, as `pickle.loads` ignores them.
///
/// ```
/// use shmkit::manager::pickle::{loads, PickleProblem, PyValue};
///
/// // (None, 'dummy', (), {}), as CPython's `connect()` sends it.
/// let request = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00(N\x8c\x05dummy\x94)}\x94t\x94.";
/// assert_eq!(
///     loads(request)?,
///     PyValue::Tuple(vec![PyValue::None, "dummy".into(), PyValue::Tuple(vec![]), PyValue::Dict(vec![])])
/// );
///
/// // os.system, by way of GLOBAL and REDUCE, is refused, not run.
/// let evil = b"\x80\x04cos\nsystem\n\x8c\x02id\x85R.";
/// assert!(matches!(
///     loads(evil).unwrap_err().problem,
///     PickleProblem::UnsupportedOpcode { opcode: b'c' }
/// ));
/// # Ok::<(), shmkit::manager::PickleError>(())
/// ```
pub fn loads(data: &[u8]) -> Result<PyValue, PickleError> {
    loads_within(data, decode_budget(data.len()))
}

/// [`loads`], with at most `budget` bytes of decoder memory rather than
/// [`decode_budget`]'s: for a reader that knows its pickles are small, such
/// as a server reading requests.
///
/// ```
/// use shmkit::manager::pickle::{dumps, loads_within, PickleProblem, PyValue};
///
/// let names = PyValue::List((0..100).map(|i| format!("psm_{i}").into()).collect());
/// let data = dumps(&names);
/// assert_eq!(loads_within(&data, 1 << 20)?, names);
/// assert_eq!(loads_within(&data, 100).unwrap_err().problem, PickleProblem::TooLarge);
/// # Ok::<(), shmkit::manager::PickleError>(())
/// ```
pub fn loads_within(data: &[u8], budget: usize) -> Result<PyValue, PickleError> {
    let mut reader = Reader {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget,
        charged: Capacities::default(),
    };
    let root = reader.run()?;
    // The visit marks cost a byte per node; what is left pays for the
    // finished value.
    reader.spend(reader.nodes.len().saturating_mul(size_of::<Visit>()))?;
    let mut expander = Expander {
        nodes: &reader.nodes,
        state: vec![Visit::New; reader.nodes.len()],
        budget: reader.budget,
        offset: reader.pos,
    };
    expander.expand(root, 0)
}

/// The capacities of the reader's own vectors and map already paid for.
#[derive(Default)]
struct Capacities {
    nodes: usize,
    stack: usize,
    marks: usize,
    memo: usize,
}

type NodeId = usize;

/// A value under construction: containers hold other nodes, so that the memo
/// can share them and `APPEND`s reach every reference, as in Python.
enum Node {
    Scalar(PyValue),
    Tuple(Vec<NodeId>),
    List(Vec<NodeId>),
    Dict(Vec<(NodeId, NodeId)>),
}

impl Node {
    fn type_name(&self) -> &'static str {
        match self {
            Node::Scalar(v) => v.type_name(),
            Node::Tuple(_) => "tuple",
            Node::List(_) => "list",
            Node::Dict(_) => "dict",
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<NodeId>,
    /// Stack heights at each `MARK`, innermost last.
    marks: Vec<usize>,
    memo: HashMap<u32, NodeId>,
    /// Bytes the reader may still allocate.
    budget: usize,
    charged: Capacities,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, problem: PickleProblem) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.pos,
            problem,
        })
    }

    /// Pays `cost` bytes from the budget, or refuses the pickle.
    fn spend(&mut self, cost: usize) -> Result<(), PickleError> {
        match self.budget.checked_sub(cost) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => self.fail(PickleProblem::TooLarge),
        }
    }

    /// Pays for `extra` more items of `each` bytes in a vector of capacity
    /// `capacity` and length `len`, charging what a grown vector would
    /// allocate (twice the items, as `Vec` doubles), before it grows.
    fn spend_growth(
        &mut self,
        capacity: usize,
        len: usize,
        extra: usize,
        each: usize,
    ) -> Result<(), PickleError> {
        let needed = len.saturating_add(extra);
        if needed <= capacity {
            return Ok(());
        }
        let grown = needed.max(capacity.saturating_mul(2)).max(4);
        self.spend(grown.saturating_sub(capacity).saturating_mul(each))
    }

    /// Pays for the reader's own vectors and memo having grown to their
    /// present capacities.
    fn settle(&mut self) -> Result<(), PickleError> {
        let now = Capacities {
            nodes: self.nodes.capacity(),
            stack: self.stack.capacity(),
            marks: self.marks.capacity(),
            // A hash table keeps a control byte besides each slot.
            memo: self.memo.capacity(),
        };
        let cost = now.nodes.saturating_sub(self.charged.nodes) * size_of::<Node>()
            + now.stack.saturating_sub(self.charged.stack) * size_of::<NodeId>()
            + now.marks.saturating_sub(self.charged.marks) * size_of::<usize>()
            + now.memo.saturating_sub(self.charged.memo) * (size_of::<(u32, NodeId)>() + 1);
        self.charged = now;
        self.spend(cost)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return self.fail(PickleProblem::Truncated);
        }
        let n = n as usize; // fits: at most the data's length
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let bytes = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn push(&mut self, node: Node) -> Result<(), PickleError> {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
        self.settle()
    }

    fn push_scalar(&mut self, value: PyValue) -> Result<(), PickleError> {
        self.push(Node::Scalar(value))
    }

    /// The lowest stack index a pop may reach: the innermost mark.
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<NodeId, PickleError> {
        if self.stack.len() <= self.fence() {
            return self.fail(PickleProblem::StackUnderflow);
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> Result<NodeId, PickleError> {
        if self.stack.len() <= self.fence() {
            return self.fail(PickleProblem::StackUnderflow);
        }
        Ok(*self.stack.last().expect("checked above"))
    }

    /// Pops everything above the innermost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<NodeId>, PickleError> {
        match self.marks.pop() {
            Some(mark) => {
                // The popped items move to a vector of their own.
                let moved = self.stack.len() - mark;
                self.spend(moved * size_of::<NodeId>())?;
                Ok(self.stack.split_off(mark))
            }
            None => self.fail(PickleProblem::NoMark),
        }
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<NodeId>, PickleError> {
        if self.stack.len() < self.fence() + n {
            return self.fail(PickleProblem::StackUnderflow);
        }
        self.spend(n * size_of::<NodeId>())?;
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn put(&mut self, key: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        self.memo.insert(key, top);
        self.settle()
    }

    fn get(&mut self, key: u32) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                self.settle()
            }
            None => self.fail(PickleProblem::MissingMemo(key)),
        }
    }

    fn string(&mut self, len: u64) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                self.spend(s.len())?;
                self.push_scalar(PyValue::Str(s.to_owned()))
            }
            Err(_) => {
                self.pos -= bytes.len();
                self.fail(PickleProblem::InvalidUtf8)
            }
        }
    }

    fn bytes(&mut self, len: u64) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        self.spend(bytes.len())?;
        self.push_scalar(PyValue::Bytes(bytes.to_vec()))
    }

    fn long(&mut self, len: u64) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        // Bytes beyond the 8th must be sign extension of the 8th.
        if bytes.len() > 8
            && (bytes[8..].iter().any(|&b| b != fill) || (bytes[7] & 0x80 != 0) != negative)
        {
            self.pos -= bytes.len();
            return self.fail(PickleProblem::IntTooLarge { bytes: len });
        }
        let mut le = [fill; 8];
        let n = bytes.len().min(8);
        le[..n].copy_from_slice(&bytes[..n]);
        self.push_scalar(PyValue::Int(i64::from_le_bytes(le)))
    }

    fn append(&mut self, opcode: &'static str, items: Vec<NodeId>) -> Result<(), PickleError> {
        let target = self.top()?;
        if let Node::List(list) = &self.nodes[target] {
            let (capacity, len) = (list.capacity(), list.len());
            self.spend_growth(capacity, len, items.len(), size_of::<NodeId>())?;
        }
        match &mut self.nodes[target] {
            Node::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => {
                let found = other.type_name();
                self.fail(PickleProblem::WrongTarget { opcode, found })
            }
        }
    }

    fn set_items(&mut self, opcode: &'static str, items: Vec<NodeId>) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return self.fail(PickleProblem::OddItems);
        }
        let target = self.top()?;
        for pair in items.chunks_exact(2) {
            if let Node::List(_) | Node::Dict(_) = self.nodes[pair[0]] {
                let found = self.nodes[pair[0]].type_name();
                return self.fail(PickleProblem::Unhashable(found));
            }
        }
        if let Node::Dict(dict) = &self.nodes[target] {
            let (capacity, len) = (dict.capacity(), dict.len());
            self.spend_growth(
                capacity,
                len,
                items.len() / 2,
                size_of::<(NodeId, NodeId)>(),
            )?;
        }
        match &mut self.nodes[target] {
            Node::Dict(dict) => {
                dict.extend(items.chunks_exact(2).map(|p| (p[0], p[1])));
                Ok(())
            }
            other => {
                let found = other.type_name();
                self.fail(PickleProblem::WrongTarget { opcode, found })
            }
        }
    }

    fn run(&mut self) -> Result<NodeId, PickleError> {
        loop {
            let start = self.pos;
            let opcode = self.byte()?;
            match opcode {
                PROTO => {
                    let version = self.byte()?;
                    if version > HIGHEST_PROTOCOL {
                        self.pos = start;
                        return self.fail(PickleProblem::UnsupportedProtocol(version));
                    }
                }
                // Frames only group opcodes for buffered reading; the whole
                // pickle is in memory, so a frame is checked and read through.
                FRAME => {
                    let len = u64::from_le_bytes(self.array()?);
                    if len > (self.data.len() - self.pos) as u64 {
                        self.pos = start;
                        return self.fail(PickleProblem::BadFrame(len));
                    }
                }
                STOP => {
                    if self.stack.len() <= self.fence() && !self.marks.is_empty() {
                        self.pos = start;
                        return self.fail(PickleProblem::MarkAtStop);
                    }
                    let top = self.pop()?;
                    return Ok(top);
                }
                MARK => {
                    self.marks.push(self.stack.len());
                    self.settle()?;
                }
                NONE => self.push_scalar(PyValue::None)?,
                NEWTRUE => self.push_scalar(PyValue::Bool(true))?,
                NEWFALSE => self.push_scalar(PyValue::Bool(false))?,
                BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push_scalar(PyValue::Int(v.into()))?;
                }
                BININT1 => {
                    let v = self.byte()?;
                    self.push_scalar(PyValue::Int(v.into()))?;
                }
                BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push_scalar(PyValue::Int(v.into()))?;
                }
                LONG1 => {
                    let n = self.byte()?;
                    self.long(n.into())?;
                }
                LONG4 => {
                    let n = i32::from_le_bytes(self.array()?);
                    let Ok(n) = u64::try_from(n) else {
                        self.pos = start;
                        return self.fail(PickleProblem::NegativeLength);
                    };
                    self.long(n)?;
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push_scalar(PyValue::Float(v))?;
                }
                SHORT_BINUNICODE => {
                    let n = self.byte()?;
                    self.string(n.into())?;
                }
                BINUNICODE => {
                    let n = u32::from_le_bytes(self.array()?);
                    self.string(n.into())?;
                }
                BINUNICODE8 => {
                    let n = u64::from_le_bytes(self.array()?);
                    self.string(n)?;
                }
                SHORT_BINBYTES => {
                    let n = self.byte()?;
                    self.bytes(n.into())?;
                }
                BINBYTES => {
                    let n = u32::from_le_bytes(self.array()?);
                    self.bytes(n.into())?;
                }
                BINBYTES8 => {
                    let n = u64::from_le_bytes(self.array()?);
                    self.bytes(n)?;
                }
                EMPTY_TUPLE => self.push(Node::Tuple(Vec::new()))?,
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let items = self.pop_n(usize::from(opcode - TUPLE1) + 1)?;
                    self.push(Node::Tuple(items))?;
                }
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?;
                }
                EMPTY_LIST => self.push(Node::List(Vec::new()))?,
                APPEND => {
                    let item = self.pop()?;
                    self.append("APPEND", vec![item])?;
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    self.append("APPENDS", items)?;
                }
                EMPTY_DICT => self.push(Node::Dict(Vec::new()))?,
                SETITEM => {
                    let items = self.pop_n(2)?;
                    self.set_items("SETITEM", items)?;
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items("SETITEMS", items)?;
                }
                MEMOIZE => {
                    let key = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.put(key)?;
                }
                BINPUT => {
                    let key = self.byte()?;
                    self.put(key.into())?;
                }
                LONG_BINPUT => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.put(key)?;
                }
                BINGET => {
                    let key = self.byte()?;
                    self.get(key.into())?;
                }
                LONG_BINGET => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.get(key)?;
                }
                _ => {
                    self.pos = start;
                    return self.fail(PickleProblem::UnsupportedOpcode { opcode });
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Visit {
    New,
    InProgress,
}

/// Turns the node graph into a tree of owned values, paying for each from
/// what the reader left of the budget (so every use of a shared node is
/// paid again), and refusing cycles.
struct Expander<'n> {
    nodes: &'n [Node],
    state: Vec<Visit>,
    budget: usize,
    offset: usize,
}

impl Expander<'_> {
    fn fail<T>(&self, problem: PickleProblem) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.offset,
            problem,
        })
    }

    fn spend(&mut self, cost: usize) -> Result<(), PickleError> {
        match self.budget.checked_sub(cost) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => self.fail(PickleProblem::TooLarge),
        }
    }

    fn expand(&mut self, id: NodeId, depth: usize) -> Result<PyValue, PickleError> {
        if depth > MAX_DEPTH {
            return self.fail(PickleProblem::TooDeep);
        }
        if self.state[id] == Visit::InProgress {
            return self.fail(PickleProblem::Recursive);
        }
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Scalar(v) => {
                // The value itself sits in its parent's vector, paid for
                // there; a string or bytes has its own allocation.
                let size = match v {
                    PyValue::Str(s) => s.len(),
                    PyValue::Bytes(b) => b.len(),
                    _ => 0,
                };
                self.spend(size)?;
                Ok(v.clone())
            }
            Node::Tuple(items) | Node::List(items) => {
                self.spend(items.len().saturating_mul(size_of::<PyValue>()))?;
                self.state[id] = Visit::InProgress;
                let mut out = Vec::with_capacity(items.len());
                for &item in items {
                    out.push(self.expand(item, depth + 1)?);
                }
                self.state[id] = Visit::New;
                Ok(match nodes[id] {
                    Node::Tuple(_) => PyValue::Tuple(out),
                    _ => PyValue::List(out),
                })
            }
            Node::Dict(pairs) => {
                self.spend(pairs.len().saturating_mul(2 * size_of::<PyValue>()))?;
                self.state[id] = Visit::InProgress;
                let mut out = Vec::with_capacity(pairs.len());
                for &(k, v) in pairs {
                    let key = self.expand(k, depth + 1)?;
                    if !key.is_hashable() {
                        return self.fail(PickleProblem::Unhashable("list"));
                    }
                    out.push((key, self.expand(v, depth + 1)?));
                }
                self.state[id] = Visit::New;
                Ok(PyValue::Dict(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn t(items: Vec<PyValue>) -> PyValue {
        PyValue::Tuple(items)
    }

    fn request(func: &str, args: Vec<PyValue>) -> PyValue {
        t(vec![
            PyValue::None,
            func.into(),
            t(args),
            PyValue::Dict(vec![]),
        ])
    }

    /// The frames of the spec's §4.7 transcript, captured from CPython 3.11.
    #[test]
    fn matches_cpython_transcripts_byte_for_byte() {
        let cases = [
            (
                request("track_segment", vec!["psm_abc".into()]),
                "80049523000000000000\
                 00284e8c0d747261636b5f7365676d656e74948c0770736d5f61626394859\
                 47d9474942e",
            ),
            (
                request("dummy", vec![]),
                "8004951000000000000000284e8c0564756d6d7994297d9474942e",
            ),
            (
                request("shutdown", vec![]),
                "8004951300000000000000284e8c0873687574646f776e94297d9474942e",
            ),
            (
                t(vec!["#RETURN".into(), PyValue::None]),
                "8004950e000000000000008c072352455455524e944e86942e",
            ),
            (
                t(vec![
                    "#RETURN".into(),
                    PyValue::List(vec!["psm_abc".into()]),
                ]),
                "8004951a000000000000008c072352455455524e945d948c0770736d5f616263946186942e",
            ),
        ];
        for (value, expected) in cases {
            let expected: String = expected.split_whitespace().collect();
            assert_eq!(hex(&dumps(&value)), expected, "{value}");
            assert_eq!(loads(&unhex(&expected)).unwrap(), value);
        }
    }

    /// `pickle.dumps(x, 4).hex()` on CPython 3.11, for each type and size
    /// class of the writer.
    #[test]
    fn matches_cpython_for_each_type() {
        let ab = || PyValue::Dict(vec![("a".into(), 1.into()), ("b".into(), 2.into())]);
        let cases: Vec<(PyValue, &str)> = vec![
            (PyValue::None, "80044e2e"),
            (PyValue::Bool(true), "8004882e"),
            (PyValue::Int(0), "80044b002e"),
            (PyValue::Int(-1), "80049506000000000000004affffffff2e"),
            (PyValue::Int(-129), "80049506000000000000004a7fffffff2e"),
            (PyValue::Int(300), "80049504000000000000004d2c012e"),
            (
                PyValue::Int(1 << 40),
                "80049509000000000000008a060000000000012e",
            ),
            (
                PyValue::Int(i64::MIN),
                "8004950b000000000000008a0800000000000000802e",
            ),
            (
                PyValue::Int(i64::MAX),
                "8004950b000000000000008a08ffffffffffffff7f2e",
            ),
            (
                PyValue::Float(1.5),
                "8004950a00000000000000473ff80000000000002e",
            ),
            (
                PyValue::Str(String::new()),
                "80049504000000000000008c00942e",
            ),
            (
                PyValue::Bytes(b"ab".to_vec()),
                "800495060000000000000043026162942e",
            ),
            (PyValue::Tuple(vec![]), "8004292e"),
            (PyValue::List(vec![]), "80045d942e"),
            (PyValue::Dict(vec![]), "80047d942e"),
            (
                ab(),
                "80049511000000000000007d94288c0161944b018c0162944b02752e",
            ),
            (
                t((1..=4).map(PyValue::Int).collect()),
                "8004950c00000000000000284b014b024b034b0474942e",
            ),
            (
                PyValue::List(vec![1.into(), 2.into()]),
                "80049509000000000000005d94284b014b02652e",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(hex(&dumps(&value)), expected, "{value}");
            assert_eq!(loads(&unhex(expected)).unwrap(), value);
        }
        // 'é'*200: 400 UTF-8 bytes, so BINUNICODE with a 4-byte length.
        let long = PyValue::Str("é".repeat(200));
        let expected = format!("80049597010000000000005890010000{}942e", "c3a9".repeat(200));
        assert_eq!(hex(&dumps(&long)), expected);
    }

    #[test]
    fn round_trips_every_type_and_size() {
        let long = "é".repeat(200);
        let value = PyValue::List(vec![
            PyValue::None,
            PyValue::Bool(false),
            PyValue::Int(i64::MAX),
            PyValue::Int(-129),
            PyValue::Int(65536),
            PyValue::Float(f64::NEG_INFINITY),
            PyValue::Str(long.clone()),
            PyValue::Bytes(vec![7; 70_000]),
            PyValue::Tuple((0..5).map(PyValue::Int).collect()),
            PyValue::List((0..2500).map(PyValue::Int).collect()),
            PyValue::Dict(
                (0..1001)
                    .map(|i| (PyValue::Int(i), long.as_str().into()))
                    .collect(),
            ),
        ]);
        assert_eq!(loads(&dumps(&value)).unwrap(), value);
    }

    #[test]
    fn memo_shares_lists_as_python_does() {
        // l = [1, 2]; pickle.dumps((l, l), 4) on CPython 3.11: the list is
        // memoized empty, filled by APPENDS, then fetched again with BINGET,
        // which must see the items appended after the MEMOIZE.
        let data = b"\x80\x04\x95\r\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02eh\x00\x86\x94.";
        let l = PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)]);
        assert_eq!(loads(data).unwrap(), t(vec![l.clone(), l]));
        // The same with APPEND after the first use was pushed.
        let data = b"\x80\x04]\x94K\x01ah\x00\x86.";
        let one = PyValue::List(vec![PyValue::Int(1)]);
        assert_eq!(loads(data).unwrap(), t(vec![one.clone(), one]));
    }

    #[test]
    fn refuses_bad_pickles_with_the_right_problem() {
        let cases: &[(&[u8], PickleProblem)] = &[
            (b"", PickleProblem::Truncated),
            (b"\x80\x04N", PickleProblem::Truncated),
            (b"\x80\x06N.", PickleProblem::UnsupportedProtocol(6)),
            (
                b"\x80\x04cos\nsystem\n.",
                PickleProblem::UnsupportedOpcode { opcode: b'c' },
            ),
            (
                b"\x80\x04R.",
                PickleProblem::UnsupportedOpcode { opcode: b'R' },
            ),
            (b".", PickleProblem::StackUnderflow),
            (b"(.", PickleProblem::MarkAtStop),
            (b"Nt.", PickleProblem::NoMark),
            (b"h\x05.", PickleProblem::MissingMemo(5)),
            (b"Na.", PickleProblem::StackUnderflow),
            (
                b"NNa.",
                PickleProblem::WrongTarget {
                    opcode: "APPEND",
                    found: "NoneType",
                },
            ),
            (b"}(Nu.", PickleProblem::OddItems),
            (b"}]Ns.", PickleProblem::Unhashable("list")),
            (b"\x8c\x02\xff\xfe.", PickleProblem::InvalidUtf8),
            (b"X\xff\xff\xff\xffab.", PickleProblem::Truncated),
            (
                b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
                PickleProblem::Truncated,
            ),
            (
                b"\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
                PickleProblem::BadFrame(255),
            ),
            (
                b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
                PickleProblem::IntTooLarge { bytes: 9 },
            ),
            (b"\x8b\xff\xff\xff\xff.", PickleProblem::NegativeLength),
            (b"]\x94h\x00a.", PickleProblem::Recursive),
            // N inside a mark: pops may not reach below it.
            (b"N(\x85.", PickleProblem::StackUnderflow),
        ];
        for (data, want) in cases {
            match loads(data) {
                Err(e) => assert_eq!(&e.problem, want, "{}", hex(data)),
                Ok(v) => panic!("{} loaded as {v}", hex(data)),
            }
        }
    }

    #[test]
    fn longs_beyond_eight_bytes_that_fit_are_read() {
        // -1 in 9 bytes, 2**63-1 in 9 bytes (with a 0 sign byte).
        assert_eq!(
            loads(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.").unwrap(),
            PyValue::Int(-1)
        );
        assert_eq!(
            loads(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00.").unwrap(),
            PyValue::Int(i64::MAX)
        );
        // 2**63 needs 9 bytes and does not fit.
        assert!(loads(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.").is_err());
        assert_eq!(loads(b"\x8a\x00.").unwrap(), PyValue::Int(0));
    }

    #[test]
    fn billion_laughs_are_refused() {
        // l0 = [], then l(i+1) = [li, li] memoized: 2**40 leaves from ~200 bytes.
        let mut data = b"\x80\x04]\x94".to_vec();
        for i in 0..40u8 {
            data.extend_from_slice(&[b']', 0x94, b'(', b'h', i, b'h', i, b'e']);
        }
        data.push(b'.');
        assert_eq!(loads(&data).unwrap_err().problem, PickleProblem::TooLarge);
    }

    /// Opcodes of a byte or two that each build a value: a list of `None`s,
    /// a chain of one-item tuples, a list of one shared empty list. Each
    /// would cost many times its size; the budget refuses them.
    #[test]
    fn cheap_opcodes_that_build_values_are_refused() {
        let n = 1 << 20;
        let mut nones = b"\x80\x04](".to_vec();
        nones.extend(std::iter::repeat_n(b'N', n));
        nones.extend_from_slice(b"e.");
        let mut chain = b"\x80\x04N".to_vec();
        chain.extend(std::iter::repeat_n(TUPLE1, n));
        chain.push(b'.');
        let mut shared = b"\x80\x04]\x94](".to_vec();
        for _ in 0..n / 2 {
            shared.extend_from_slice(b"h\x00");
        }
        shared.extend_from_slice(b"e.");
        let mut dict = b"\x80\x04}(".to_vec();
        for _ in 0..n / 2 {
            dict.extend_from_slice(b"NN");
        }
        dict.extend_from_slice(b"u.");
        for data in [&nones, &chain, &shared, &dict] {
            assert_eq!(loads(data).unwrap_err().problem, PickleProblem::TooLarge);
        }
        // A short one of each still loads.
        let mut few = b"\x80\x04](".to_vec();
        few.extend(std::iter::repeat_n(b'N', 100));
        few.extend_from_slice(b"e.");
        assert_eq!(loads(&few).unwrap().as_sequence().unwrap().len(), 100);
    }

    /// What the protocol really carries in bulk, `list_segments`'s reply
    /// for a manager with many segments, fits the budget.
    #[test]
    fn a_long_list_of_names_fits_the_budget() {
        for count in [1000usize, 100_000] {
            let names = (0..count)
                .map(|i| PyValue::Str(format!("psm_{i:08x}")))
                .collect();
            let reply = t(vec!["#RETURN".into(), PyValue::List(names)]);
            assert_eq!(loads(&dumps(&reply)).unwrap(), reply);
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let mut data = vec![b']'; 1000];
        data.extend(std::iter::repeat_n(b'a', 999));
        data.push(b'.');
        assert_eq!(loads(&data).unwrap_err().problem, PickleProblem::TooDeep);
        // Deeper still, the budget refuses it before the depth is known.
        let mut data = vec![b']'; 100_000];
        data.extend(std::iter::repeat_n(b'a', 99_999));
        data.push(b'.');
        assert!(matches!(
            loads(&data).unwrap_err().problem,
            PickleProblem::TooDeep | PickleProblem::TooLarge
        ));
        let mut ok = vec![b']'; 50];
        ok.extend(std::iter::repeat_n(b'a', 49));
        ok.push(b'.');
        assert!(loads(&ok).is_ok());
    }

    #[test]
    fn reprs_look_like_pythons() {
        let v = t(vec![
            PyValue::None,
            "it's".into(),
            "a\n\\".into(),
            PyValue::Bytes(b"\x00'a".to_vec()),
            PyValue::Float(1.0),
            PyValue::Float(1e100),
            PyValue::Tuple(vec![PyValue::Int(1)]),
            PyValue::Dict(vec![("k".into(), PyValue::List(vec![]))]),
        ]);
        assert_eq!(
            v.repr(),
            r#"(None, "it's", 'a\n\\', b"\x00'a", 1.0, 1e+100, (1,), {'k': []})"#
        );
    }
}
