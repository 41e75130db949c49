//! Tensors as files hold them: [`RawTensor`], the elements as stored (little-endian, row-major)
//! with their [`DType`], and [`Tensor`], the values widened to f32 for analysis.
//!
//! A `RawTensor` is also what a graph's initializers are, so that the graph passes can read and
//! write weights without a tensor library: the conversions below follow Rust's `as` casts, the
//! same as the engine's values, so that a pass computes the same bits as the operators would.

use std::fmt;

use zeropoint_core::{Packing, Storage};

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

    /// The element type that stores codes of `storage` (4-bit storage is one value per byte in
    /// memory, packed in files), if zeropoint reads it (2-bit types came to ONNX in opset 25).
    pub fn of_storage(storage: Storage) -> Option<DType> {
        DType::CODES
            .into_iter()
            .find(|d| d.storage() == Some(storage))
    }

    /// The element types of quantized codes.
    pub const CODES: [DType; 6] = [
        DType::U4,
        DType::I4,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
    ];

    /// The code storage this element type is, if it is one of QuantizeLinear's.
    pub fn storage(self) -> Option<Storage> {
        Some(match self {
            DType::I8 => Storage::I8,
            DType::U8 => Storage::U8,
            DType::I16 => Storage::I16,
            DType::U16 => Storage::U16,
            DType::I4 => Storage::Packed(Packing::Int4),
            DType::U4 => Storage::Packed(Packing::UInt4),
            _ => return None,
        })
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

    /// A float32 tensor of `values` (row-major, `shape`).
    pub fn from_f32s(name: impl Into<String>, shape: &[usize], values: &[f32]) -> RawTensor {
        RawTensor {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: DType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A tensor of element type `dtype` holding `values` converted as Rust's `as` converts them
    /// (floats rounded to the nearest, integers truncated toward zero and saturated, then
    /// wrapped into narrower integer types).
    pub fn from_f64s(
        name: impl Into<String>,
        shape: &[usize],
        values: &[f64],
        dtype: DType,
    ) -> RawTensor {
        let data = match dtype {
            DType::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F32 => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            DType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_bits().to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f64(v).to_bits().to_le_bytes())
                .collect(),
            DType::U8 => values.iter().map(|&v| v as u8).collect(),
            DType::Bool => values.iter().map(|&v| u8::from(v != 0.0)).collect(),
            d => {
                return RawTensor::from_i64s(
                    name,
                    shape,
                    &values.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                    d,
                )
            }
        };
        RawTensor {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            data,
        }
    }

    /// An integer (or bool) tensor of element type `dtype` holding `values`, each wrapped into
    /// the type as `as` does (4-bit types keep their low byte, one value per byte).
    pub fn from_i64s(
        name: impl Into<String>,
        shape: &[usize],
        values: &[i64],
        dtype: DType,
    ) -> RawTensor {
        fn le<const N: usize>(v: &[i64], f: impl Fn(i64) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(|&x| f(x)).collect()
        }
        let data = match dtype {
            DType::I64 | DType::U64 => le(values, i64::to_le_bytes),
            DType::I32 => le(values, |x| (x as i32).to_le_bytes()),
            DType::U32 => le(values, |x| (x as u32).to_le_bytes()),
            DType::I16 => le(values, |x| (x as i16).to_le_bytes()),
            DType::U16 => le(values, |x| (x as u16).to_le_bytes()),
            DType::Bool => le(values, |x| [u8::from(x != 0)]),
            DType::F64 => le(values, |x| (x as f64).to_le_bytes()),
            DType::F32 => le(values, |x| (x as f32).to_le_bytes()),
            DType::F16 => le(values, |x| {
                half::f16::from_f64(x as f64).to_bits().to_le_bytes()
            }),
            DType::BF16 => le(values, |x| {
                half::bf16::from_f64(x as f64).to_bits().to_le_bytes()
            }),
            DType::I8 | DType::U8 | DType::I4 | DType::U4 => le(values, |x| [x as u8]),
        };
        RawTensor {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            data,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as f32 (floats rounded, integers converted as `as` does).
    pub fn to_f32s(&self) -> Vec<f32> {
        self.dtype.decode(&self.data, true)
    }

    /// The elements of a float32 tensor read in place, without a copy: None for other types,
    /// and where the bytes are not aligned for f32 (the allocator's blocks always are).
    pub fn f32s_in_place(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is an f32; align_to only yields the aligned middle part.
        let (head, floats, tail) = unsafe { self.data.align_to::<f32>() };
        (head.is_empty() && tail.is_empty()).then_some(floats)
    }

    /// The elements as f32, borrowed where they can be ([`RawTensor::f32s_in_place`]).
    pub fn f32s(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.f32s_in_place() {
            Some(f) => std::borrow::Cow::Borrowed(f),
            None => std::borrow::Cow::Owned(self.to_f32s()),
        }
    }

    /// The elements as f64: exact for every type but 64-bit integers beyond 2^53.
    pub fn to_f64s(&self) -> Vec<f64> {
        match self.dtype {
            DType::F64 => le(&self.data, f64::from_le_bytes),
            DType::F32 => le(&self.data, |b| f64::from(f32::from_le_bytes(b))),
            DType::F16 => le(&self.data, |b| {
                half::f16::from_bits(u16::from_le_bytes(b)).to_f64()
            }),
            DType::BF16 => le(&self.data, |b| {
                half::bf16::from_bits(u16::from_le_bytes(b)).to_f64()
            }),
            _ => self.to_i64s().into_iter().map(|v| v as f64).collect(),
        }
    }

    /// The elements as i64: exact for integer types (uint64 keeps its bits), floats truncated
    /// toward zero and saturated as `as` does.
    pub fn to_i64s(&self) -> Vec<i64> {
        let d = &self.data;
        match self.dtype {
            DType::I64 | DType::U64 => le(d, i64::from_le_bytes),
            DType::I32 => le(d, |b| i32::from_le_bytes(b) as i64),
            DType::U32 => le(d, |b| u32::from_le_bytes(b) as i64),
            DType::I16 => le(d, |b| i16::from_le_bytes(b) as i64),
            DType::U16 => le(d, |b| u16::from_le_bytes(b) as i64),
            DType::I8 | DType::I4 => d.iter().map(|&b| b as i8 as i64).collect(),
            DType::U8 | DType::U4 => d.iter().map(|&b| b as i64).collect(),
            DType::Bool => d.iter().map(|&b| i64::from(b != 0)).collect(),
            _ => self.to_f64s().into_iter().map(|v| v as i64).collect(),
        }
    }
}

/// `bytes` read as little-endian elements of `N` bytes each.
fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N")))
        .collect()
}

/// Number of elements of a shape, or None if it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_data_is_read_in_place_and_others_are_decoded() {
        let values = [1.0, -2.5, 3.0, 0.0, f32::MIN, 7.25];
        let t = RawTensor::from_f32s("w", &[2, 3], &values);
        assert_eq!(t.f32s_in_place(), Some(&values[..]));
        assert!(matches!(t.f32s(), std::borrow::Cow::Borrowed(_)));
        let half = RawTensor {
            dtype: DType::F16,
            shape: vec![1],
            data: vec![0x00, 0x3c],
            name: "h".into(),
        };
        assert!(half.f32s_in_place().is_none());
        assert_eq!(half.f32s().as_ref(), &[1.0]);
    }
}
