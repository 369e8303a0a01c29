//! The values a pickle of the manager protocol carries.

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

    pub(super) fn is_hashable(&self) -> bool {
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
