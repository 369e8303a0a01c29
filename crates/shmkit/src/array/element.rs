//! [`Element`]: the Rust types an array's elements are copied to and from.

use super::{ByteOrder, DType, ScalarKind};

/// A Rust type that stands for one of numpy's dtypes in native byte order.
///
/// Elements are copied through bytes, never referenced in place, so any
/// bit pattern another process wrote reads as a valid value (a `bool` is
/// any nonzero byte).
///
/// ```
/// use shmkit::array::Element;
///
/// assert_eq!(f32::dtype().to_string(), "<f4");
/// assert_eq!(bool::dtype().to_string(), "|b1");
/// ```
pub trait Element: Copy + sealed::Sealed {
    /// The size in bytes.
    const SIZE: usize;
    /// The dtype the type stands for.
    fn dtype() -> DType;
    /// The value in `bytes` (exactly [`SIZE`](Self::SIZE) long).
    fn from_bytes(bytes: &[u8]) -> Self;
    /// Writes the value into `out` (exactly [`SIZE`](Self::SIZE) long).
    fn to_bytes(self, out: &mut [u8]);
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! number {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl Element for $ty {
            const SIZE: usize = std::mem::size_of::<$ty>();
            fn dtype() -> DType {
                let order = if Self::SIZE == 1 { ByteOrder::NotApplicable } else { ByteOrder::NATIVE };
                DType::new(ScalarKind::$kind, order, Self::SIZE).expect("a numpy dtype")
            }
            fn from_bytes(bytes: &[u8]) -> Self {
                let mut b = [0u8; std::mem::size_of::<$ty>()];
                b.copy_from_slice(bytes);
                <$ty>::from_ne_bytes(b)
            }
            fn to_bytes(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_ne_bytes());
            }
        }
    )*};
}

number!(
    i8 => Int, i16 => Int, i32 => Int, i64 => Int,
    u8 => UInt, u16 => UInt, u32 => UInt, u64 => UInt,
    f32 => Float, f64 => Float,
);

impl sealed::Sealed for bool {}
impl Element for bool {
    const SIZE: usize = 1;
    fn dtype() -> DType {
        DType::new(ScalarKind::Bool, ByteOrder::NotApplicable, 1).expect("a numpy dtype")
    }
    fn from_bytes(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn to_bytes(self, out: &mut [u8]) {
        out[0] = self.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_round_trips_through_bytes() {
        let mut b = [0u8; 8];
        (-3i64).to_bytes(&mut b);
        assert_eq!(i64::from_bytes(&b), -3);
        assert_eq!(i16::dtype().itemsize(), 2);
        assert!(bool::from_bytes(&[7]));
        assert_eq!(u8::dtype().to_string(), "|u1");
    }
}
