//! The one error type of the core crate. Messages are single lines that say what is wrong and with
//! which value, so that callers can prefix the file or tensor name and show them as they are.

/// Everything that can go wrong when building a scheme, computing parameters or running a kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("bit-width {0} is out of range: zeropoint supports 2 to 16 bits")]
    Bits(u32),
    #[error("invalid scheme: {0}")]
    Scheme(String),
    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    Axis { axis: usize, rank: usize },
    #[error("block size must be at least 1")]
    BlockSize,
    #[error("the range [{min}, {max}] is not finite")]
    NonFiniteRange { min: f32, max: f32 },
    #[error("the range [{min}, {max}] is inverted: min is greater than max")]
    InvertedRange { min: f32, max: f32 },
    #[error("the data holds {count} NaN value(s); a range cannot be estimated from NaN")]
    NaN { count: usize },
    #[error("the tensor is empty: there is no data to estimate a range from")]
    Empty,
    #[error("shape {shape:?} holds {expected} elements but {what} has {got}")]
    Length {
        what: &'static str,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("{what} holds {got} values but the {granularity} needs {expected}")]
    ParamCount {
        what: &'static str,
        granularity: String,
        expected: usize,
        got: usize,
    },
    #[error("scale {0} at index {1} is not a positive finite number")]
    BadScale(f32, usize),
    #[error("zero-point {zero_point} at index {index} is outside the grid [{qmin}, {qmax}]")]
    BadZeroPoint {
        zero_point: i32,
        index: usize,
        qmin: i32,
        qmax: i32,
    },
    #[error("the grid [{qmin}, {qmax}] does not fit in {storage} storage")]
    Storage {
        qmin: i32,
        qmax: i32,
        storage: &'static str,
    },
    #[error("{a} holds {got} values but {b} holds {expected}")]
    Mismatch {
        a: &'static str,
        b: &'static str,
        expected: usize,
        got: usize,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
