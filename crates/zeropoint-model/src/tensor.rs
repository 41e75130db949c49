//! A named tensor read from a file, its values widened to f32 for analysis.

use std::fmt;

use zeropoint_core::Packing;

/// Element types zeropoint reads from tensor files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    /// 4-bit integers: packed two per byte in ONNX files, one per byte in memory (sign-extended).
    I4,
    /// 4-bit unsigned integers: packed two per byte in ONNX files, one per byte in memory.
    U4,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U64 => "uint64",
            DType::U32 => "uint32",
            DType::U16 => "uint16",
            DType::U8 => "uint8",
            DType::Bool => "bool",
            DType::I4 => "int4",
            DType::U4 => "uint4",
        }
    }

    /// Bytes per element in memory (4-bit types take a byte each there; see [`DType::packing`]).
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool | DType::I4 | DType::U4 => 1,
        }
    }

    /// How a sub-byte type is packed in ONNX files (None for whole-byte types).
    pub fn packing(self) -> Option<Packing> {
        match self {
            DType::I4 => Some(Packing::Int4),
            DType::U4 => Some(Packing::UInt4),
            _ => None,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// Decodes `bytes` (exactly `n * size()` of them) to f32.
    pub fn decode(self, bytes: &[u8], little_endian: bool) -> Vec<f32> {
        macro_rules! conv {
            ($t:ty, $n:literal, $f:expr) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let a: [u8; $n] = c.try_into().unwrap();
                        let v = if little_endian {
                            <$t>::from_le_bytes(a)
                        } else {
                            <$t>::from_be_bytes(a)
                        };
                        #[allow(clippy::redundant_closure_call)]
                        $f(v)
                    })
                    .collect()
            };
        }
        match self {
            DType::F64 => conv!(f64, 8, |v: f64| v as f32),
            DType::F32 => conv!(f32, 4, |v: f32| v),
            DType::F16 => conv!(u16, 2, |v: u16| half::f16::from_bits(v).to_f32()),
            DType::BF16 => conv!(u16, 2, |v: u16| half::bf16::from_bits(v).to_f32()),
            DType::I64 => conv!(i64, 8, |v: i64| v as f32),
            DType::I32 => conv!(i32, 4, |v: i32| v as f32),
            DType::I16 => conv!(i16, 2, |v: i16| v as f32),
            DType::I8 | DType::I4 => bytes.iter().map(|&b| b as i8 as f32).collect(),
            DType::U64 => conv!(u64, 8, |v: u64| v as f32),
            DType::U32 => conv!(u32, 4, |v: u32| v as f32),
            DType::U16 => conv!(u16, 2, |v: u16| v as f32),
            DType::U8 | DType::U4 => bytes.iter().map(|&b| b as f32).collect(),
            DType::Bool => bytes.iter().map(|&b| f32::from(u8::from(b != 0))).collect(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The type it was stored as.
    pub dtype: DType,
    /// Its values, row-major, widened (or for 64-bit types rounded) to f32.
    pub values: Vec<f32>,
}

/// A tensor with its elements as stored: little-endian bytes in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// The same tensor with its values widened to f32.
    pub fn widen(self) -> Tensor {
        Tensor {
            values: self.dtype.decode(&self.data, true),
            name: self.name,
            shape: self.shape,
            dtype: self.dtype,
        }
    }
}

/// Number of elements of a shape, or None if it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
