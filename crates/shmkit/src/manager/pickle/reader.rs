//! Reading: protocols 2–5 of plain data, defensively, within a budget.

use std::collections::HashMap;

use super::opcodes::*;
use super::PyValue;

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
/// [`ManagerError::Pickle`](crate::manager::ManagerError::Pickle). Bindings raise
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
// The reader

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

/// Takes `cost` bytes from what both passes may still allocate, or refuses
/// the pickle (at `offset`) as too large.
fn pay(budget: &mut usize, cost: usize, offset: usize) -> Result<(), PickleError> {
    *budget = budget.checked_sub(cost).ok_or(PickleError {
        offset,
        problem: PickleProblem::TooLarge,
    })?;
    Ok(())
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
        pay(&mut self.budget, cost, self.pos)
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
        pay(&mut self.budget, cost, self.offset)
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
