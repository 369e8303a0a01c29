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

mod opcodes;
mod reader;
mod value;
mod writer;

pub use opcodes::HIGHEST_PROTOCOL;
pub use reader::{
    decode_budget, loads, loads_within, PickleError, PickleProblem, BUDGET_BASE, BUDGET_PER_BYTE,
    MAX_DEPTH,
};
pub use value::PyValue;
pub use writer::dumps;

#[cfg(test)]
mod tests;
