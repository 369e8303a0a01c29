//! The values a [`ShareableList`](super::ShareableList) holds: [`Value`],
//! owned, as reads return it, and [`ValueRef`], borrowed, as writes take it.

/// One item of a shareable list, as read out of the segment.
///
/// The six variants are the six Python types CPython's `ShareableList`
/// stores: `int` (64-bit), `float`, `bool`, `None`, `str` and `bytes`.
///
/// `==` compares structurally (`Int(1) != Bool(true)`, `NaN != NaN`); for
/// Python's `==`, which [`ShareableList::count`](super::ShareableList::count)
/// and [`index`](super::ShareableList::index) use, see [`ValueRef::py_eq`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A Python `int` that fits 64 bits (format `q`).
    Int(i64),
    /// A Python `float` (format `d`).
    Float(f64),
    /// A Python `bool` (format `xxxxxxx?`).
    Bool(bool),
    /// Python's `None` (format `xxxxxx?x`).
    None,
    /// A Python `str` (format `Ns`, UTF-8).
    Str(String),
    /// A Python `bytes` (format `Ns`).
    Bytes(Vec<u8>),
}

impl Value {
    /// Python's `repr()` of the value, as `print(repr(sl[i]))` shows it.
    ///
    /// ```
    /// use shmkit::list::Value;
    /// assert_eq!(Value::Float(-273.154).repr(), "-273.154");
    /// assert_eq!(Value::from("howdy").repr(), "'howdy'");
    /// assert_eq!(Value::None.repr(), "None");
    /// ```
    pub fn repr(&self) -> String {
        use crate::pyrepr::{bytes_repr, float_repr, str_repr};
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => float_repr(*f),
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            Value::None => "None".to_owned(),
            Value::Str(s) => str_repr(s),
            Value::Bytes(b) => bytes_repr(b),
        }
    }
}

/// A borrowed [`Value`]: what [`ShareableList::set`](super::ShareableList::set)
/// and [`ShareableList::create`](super::ShareableList::create) take, so that
/// writing a string copies it once, straight into the segment.
///
/// Most things convert into it: `i64`, `f64`, `bool`, `&str`, `&[u8]`,
/// `&Value`, and `()` for `None`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// A Python `int` that fits 64 bits.
    Int(i64),
    /// A Python `float`.
    Float(f64),
    /// A Python `bool`.
    Bool(bool),
    /// Python's `None`.
    None,
    /// A Python `str`.
    Str(&'a str),
    /// A Python `bytes`.
    Bytes(&'a [u8]),
}

impl Value {
    /// A borrowed view of this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        ValueRef::from(self)
    }

    /// The name of the Python type this value is (`"int"`, `"str"`, …).
    pub fn type_name(&self) -> &'static str {
        self.as_ref().type_name()
    }
}

impl ValueRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Value {
        match *self {
            ValueRef::Int(v) => Value::Int(v),
            ValueRef::Float(v) => Value::Float(v),
            ValueRef::Bool(v) => Value::Bool(v),
            ValueRef::None => Value::None,
            ValueRef::Str(v) => Value::Str(v.to_owned()),
            ValueRef::Bytes(v) => Value::Bytes(v.to_vec()),
        }
    }

    /// The name of the Python type this value is (`"int"`, `"str"`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueRef::Int(_) => "int",
            ValueRef::Float(_) => "float",
            ValueRef::Bool(_) => "bool",
            ValueRef::None => "None",
            ValueRef::Str(_) => "str",
            ValueRef::Bytes(_) => "bytes",
        }
    }

    /// Python's `==`: numbers compare by value across `int`, `float` and
    /// `bool` (`1 == 1.0 == True`), exactly (`2**53 + 1 != 2.0**53`), and
    /// `NaN` equals nothing; `str` never equals `bytes`.
    ///
    /// ```
    /// use shmkit::list::ValueRef;
    /// assert!(ValueRef::Int(1).py_eq(ValueRef::Bool(true)));
    /// assert!(ValueRef::Float(-0.0).py_eq(ValueRef::Int(0)));
    /// assert!(!ValueRef::Int((1 << 53) + 1).py_eq(ValueRef::Float(9007199254740992.0)));
    /// assert!(!ValueRef::Str("a").py_eq(ValueRef::Bytes(b"a")));
    /// ```
    pub fn py_eq(self, other: ValueRef<'_>) -> bool {
        match (self, other) {
            (ValueRef::None, ValueRef::None) => true,
            (ValueRef::Str(a), ValueRef::Str(b)) => a == b,
            (ValueRef::Bytes(a), ValueRef::Bytes(b)) => a == b,
            (a, b) => match (a.number(), b.number()) {
                (Some(Number::Int(a)), Some(Number::Int(b))) => a == b,
                (Some(Number::Float(a)), Some(Number::Float(b))) => a == b,
                (Some(Number::Int(i)), Some(Number::Float(f)))
                | (Some(Number::Float(f)), Some(Number::Int(i))) => int_eq_float(i, f),
                _ => false,
            },
        }
    }

    fn number(self) -> Option<Number> {
        match self {
            ValueRef::Int(v) => Some(Number::Int(v)),
            ValueRef::Bool(v) => Some(Number::Int(i64::from(v))),
            ValueRef::Float(v) => Some(Number::Float(v)),
            _ => None,
        }
    }
}

enum Number {
    Int(i64),
    Float(f64),
}

/// Exact comparison, as Python does it: no rounding of the integer.
fn int_eq_float(i: i64, f: f64) -> bool {
    // 2^63 as f64 is exact; every finite whole f64 in [-2^63, 2^63) is an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) && f as i64 == i
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Int(v) => ValueRef::Int(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::Bool(v) => ValueRef::Bool(*v),
            Value::None => ValueRef::None,
            Value::Str(v) => ValueRef::Str(v),
            Value::Bytes(v) => ValueRef::Bytes(v),
        }
    }
}

impl<'a, 'b: 'a> From<&'a ValueRef<'b>> for ValueRef<'a> {
    fn from(v: &'a ValueRef<'b>) -> Self {
        *v
    }
}

impl<'a> From<&'a str> for ValueRef<'a> {
    fn from(v: &'a str) -> Self {
        ValueRef::Str(v)
    }
}

impl<'a> From<&'a String> for ValueRef<'a> {
    fn from(v: &'a String) -> Self {
        ValueRef::Str(v)
    }
}

impl<'a> From<&'a [u8]> for ValueRef<'a> {
    fn from(v: &'a [u8]) -> Self {
        ValueRef::Bytes(v)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for ValueRef<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        ValueRef::Bytes(v)
    }
}

macro_rules! scalar_from {
    ($($ty:ty => $variant:ident),*) => {$(
        impl From<$ty> for ValueRef<'_> {
            fn from(v: $ty) -> Self {
                ValueRef::$variant(v)
            }
        }
        impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Value::$variant(v)
            }
        }
    )*};
}

scalar_from!(i64 => Int, f64 => Float, bool => Bool);

impl From<()> for ValueRef<'_> {
    fn from(_: ()) -> Self {
        ValueRef::None
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Self {
        Value::None
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(v: ValueRef<'_>) -> Self {
        v.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_eq_follows_python() {
        use ValueRef as V;
        assert!(V::None.py_eq(V::None));
        assert!(!V::None.py_eq(V::Int(0)));
        assert!(V::Bool(false).py_eq(V::Int(0)));
        assert!(V::Bool(true).py_eq(V::Float(1.0)));
        assert!(!V::Float(f64::NAN).py_eq(V::Float(f64::NAN)));
        assert!(!V::Float(f64::INFINITY).py_eq(V::Int(i64::MAX)));
        assert!(V::Float(-9_223_372_036_854_775_808.0).py_eq(V::Int(i64::MIN)));
        assert!(!V::Float(9_223_372_036_854_775_808.0).py_eq(V::Int(i64::MAX)));
        assert!(!V::Float(0.5).py_eq(V::Int(0)));
        assert!(V::Str("").py_eq(V::Str("")));
        assert!(!V::Bytes(b"").py_eq(V::Str("")));
    }

    #[test]
    fn conversions() {
        assert_eq!(ValueRef::from(3i64), ValueRef::Int(3));
        assert_eq!(ValueRef::from("x"), ValueRef::Str("x"));
        assert_eq!(ValueRef::from(b"x"), ValueRef::Bytes(b"x"));
        assert_eq!(ValueRef::from(()), ValueRef::None);
        let v = Value::from("y");
        assert_eq!(ValueRef::from(&v), ValueRef::Str("y"));
        assert_eq!(ValueRef::Str("y").to_owned(), v);
    }
}
