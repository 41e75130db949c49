//! The values the executor computes with: a candle tensor and the ONNX element type it stands for.
//!
//! candle has fewer integer types than ONNX, so integers are carried in the widest candle type
//! that holds them exactly: every signed and unsigned integer type but uint8 in i64, uint8 and
//! bool in u8 (bool as 0/1). Floats keep their own type. The [`DType`] says what the value is;
//! conversions back to files restore it exactly.

use candle_core::{DType as CDType, Device, Tensor};

use zeropoint_onnx::{DType, RawTensor};

use crate::error::Result;

/// A tensor and its ONNX element type.
#[derive(Debug, Clone)]
pub struct Value {
    pub tensor: Tensor,
    pub dtype: DType,
}

/// The candle type that carries an ONNX element type.
pub fn carrier(dtype: DType) -> CDType {
    match dtype {
        DType::F32 => CDType::F32,
        DType::F64 => CDType::F64,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
        DType::U8 | DType::Bool => CDType::U8,
        DType::I64
        | DType::I32
        | DType::I16
        | DType::I8
        | DType::U64
        | DType::U32
        | DType::U16
        | DType::I4
        | DType::U4 => CDType::I64,
    }
}

impl Value {
    /// Wraps a tensor whose candle type must be the carrier of `dtype`.
    pub fn new(tensor: Tensor, dtype: DType) -> Value {
        debug_assert_eq!(tensor.dtype(), carrier(dtype), "{dtype}");
        Value { tensor, dtype }
    }

    pub fn f32(tensor: Tensor) -> Value {
        Value::new(tensor, DType::F32)
    }

    pub fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }

    /// An int64 vector (shapes, axes, indices, pads).
    pub fn from_i64s(values: &[i64]) -> Value {
        let t = Tensor::from_slice(values, values.len(), &Device::Cpu).expect("shape matches");
        Value::new(t, DType::I64)
    }

    /// A float32 tensor from row-major values.
    pub fn from_f32_vec(data: Vec<f32>, shape: &[usize]) -> Result<Value> {
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
        Ok(Value::new(t, DType::F32))
    }

    /// An integer (or bool) tensor of element type `dtype` from row-major values, which must
    /// fit that type.
    pub fn from_ints(data: Vec<i64>, shape: &[usize], dtype: DType) -> Result<Value> {
        let t =
            Tensor::from_vec(data, shape, &Device::Cpu).and_then(|t| t.to_dtype(carrier(dtype)))?;
        Ok(Value::new(t, dtype))
    }

    /// A tensor read from a file or an initializer.
    pub fn from_raw(raw: &RawTensor) -> Result<Value> {
        let n = raw.data.len() / raw.dtype.size().max(1);
        let shape = raw.shape.as_slice();
        let dev = &Device::Cpu;
        let bytes = &raw.data;
        fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().unwrap()))
                .collect()
        }
        let t = match raw.dtype {
            DType::F32 => Tensor::from_vec(le(bytes, f32::from_le_bytes), shape, dev),
            DType::F64 => Tensor::from_vec(le(bytes, f64::from_le_bytes), shape, dev),
            DType::F16 => Tensor::from_vec(
                le(bytes, |b| half::f16::from_bits(u16::from_le_bytes(b))),
                shape,
                dev,
            ),
            DType::BF16 => Tensor::from_vec(
                le(bytes, |b| half::bf16::from_bits(u16::from_le_bytes(b))),
                shape,
                dev,
            ),
            DType::I64 => Tensor::from_vec(le(bytes, i64::from_le_bytes), shape, dev),
            DType::I32 => Tensor::from_vec(le(bytes, |b| i32::from_le_bytes(b) as i64), shape, dev),
            DType::I16 => Tensor::from_vec(le(bytes, |b| i16::from_le_bytes(b) as i64), shape, dev),
            DType::I8 | DType::I4 => {
                Tensor::from_vec(le(bytes, |b: [u8; 1]| b[0] as i8 as i64), shape, dev)
            }
            DType::U4 => Tensor::from_vec(le(bytes, |b: [u8; 1]| b[0] as i64), shape, dev),
            DType::U64 => Tensor::from_vec(le(bytes, |b| u64::from_le_bytes(b) as i64), shape, dev),
            DType::U32 => Tensor::from_vec(le(bytes, |b| u32::from_le_bytes(b) as i64), shape, dev),
            DType::U16 => Tensor::from_vec(le(bytes, |b| u16::from_le_bytes(b) as i64), shape, dev),
            DType::U8 => Tensor::from_vec(bytes.clone(), shape, dev),
            DType::Bool => Tensor::from_vec(
                bytes.iter().map(|&b| u8::from(b != 0)).collect::<Vec<_>>(),
                shape,
                dev,
            ),
        }
        .map_err(|e| {
            format!(
                "{} values do not fit shape {shape:?}: {}",
                n,
                crate::Error::from(e)
            )
        })?;
        Ok(Value::new(t, raw.dtype))
    }

    /// The value as a tensor of its own element type, for writing to a file.
    pub fn to_raw(&self, name: &str) -> Result<RawTensor> {
        let t = self.tensor.flatten_all()?;
        let data: Vec<u8> = match self.dtype {
            // From the storage in one copy: by way of a Vec<f32>, a model's largest weight was
            // held three times while it was given back to the graph.
            DType::F32 => with_f32_slice(&t, |x| {
                let mut data = Vec::with_capacity(x.len() * 4);
                x.iter()
                    .for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
                data
            })?,
            DType::F64 => bytes_of(t.to_vec1::<f64>()?, f64::to_le_bytes),
            DType::F16 => bytes_of(t.to_vec1::<half::f16>()?, |v| v.to_bits().to_le_bytes()),
            DType::BF16 => bytes_of(t.to_vec1::<half::bf16>()?, |v| v.to_bits().to_le_bytes()),
            DType::U8 | DType::Bool => t.to_vec1::<u8>()?,
            d => {
                let v = t.to_vec1::<i64>()?;
                match d {
                    DType::I64 | DType::U64 => bytes_of(v, i64::to_le_bytes),
                    DType::I32 => bytes_of(v, |x| (x as i32).to_le_bytes()),
                    DType::U32 => bytes_of(v, |x| (x as u32).to_le_bytes()),
                    DType::I16 => bytes_of(v, |x| (x as i16).to_le_bytes()),
                    DType::U16 => bytes_of(v, |x| (x as u16).to_le_bytes()),
                    _ => bytes_of(v, |x| [x as i8 as u8]),
                }
            }
        };
        Ok(RawTensor {
            name: name.to_string(),
            shape: self.shape().to_vec(),
            dtype: self.dtype,
            data,
        })
    }

    /// The elements as i64 (for shape-like operands: shapes, axes, pads, indices, repeats).
    pub fn to_i64s(&self) -> Result<Vec<i64>> {
        self.elements()
    }

    /// The elements as f64 (for scalar float operands).
    pub fn to_f64s(&self) -> Result<Vec<f64>> {
        self.elements()
    }

    /// The elements as f32, row-major.
    pub fn to_f32s(&self) -> Result<Vec<f32>> {
        self.elements()
    }

    /// Calls `f` with the elements as f32, row-major: borrowed from the tensor's own storage
    /// when it is a contiguous float32 tensor (observers read every activation of every
    /// calibration batch; a copy each time was a tenth of calibration), else converted.
    pub fn with_f32s<T>(&self, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
        with_f32_slice(&self.tensor, f)
    }

    /// The elements converted to `T`, row-major.
    fn elements<T: candle_core::WithDType>(&self) -> Result<Vec<T>> {
        elements(&self.tensor)
    }
}

/// The elements of `t` converted to `T`, row-major.
fn elements<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()
        .and_then(|t| t.to_dtype(T::DTYPE))
        .and_then(|t| t.to_vec1::<T>())?)
}

fn bytes_of<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

/// The float32 elements a candle custom op receives as a storage and its layout; the ops
/// here make their arguments contiguous first.
pub fn storage_f32s<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((start, end)) => elements_in(s.as_slice::<f32>()?, start, end)
            .ok_or_else(|| candle_core::Error::msg("a tensor's layout lies outside its storage")),
        None => candle_core::bail!("a custom op was given a non-contiguous tensor"),
    }
}

/// `all[start..end]`; empty for an empty range wherever it starts (a view of no elements may
/// point past the end of an empty storage: an LSTM's state of a batch of no sequences, narrowed).
fn elements_in(all: &[f32], start: usize, end: usize) -> Option<&[f32]> {
    if start >= end {
        return Some(&[]);
    }
    all.get(start..end)
}

/// Calls `f` with the float32 elements of each of `ts` (made contiguous), borrowed from their
/// storage: what a custom op's backward pass reads its tensors with.
pub fn with_f32_slices<const N: usize, T>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> T,
) -> candle_core::Result<T> {
    let ts = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(N);
    for (s, l) in &guards {
        match &**s {
            candle_core::Storage::Cpu(s) => slices.push(storage_f32s(s, l)?),
            _ => candle_core::bail!("custom ops run on the CPU"),
        }
    }
    match slices.try_into() {
        Ok(slices) => Ok(f(slices)),
        Err(_) => candle_core::bail!("custom op: {N} tensors expected"),
    }
}

/// Calls `f` with the elements of `t` as f32, row-major: borrowed from its storage when it is a
/// contiguous float32 tensor, else converted into a new vector.
pub fn with_f32_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    if t.dtype() == CDType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            let all = cpu.as_slice::<f32>()?;
            if let Some(elements) = elements_in(all, start, end) {
                return Ok(f(elements));
            }
        }
    }
    Ok(f(&elements::<f32>(t)?))
}
