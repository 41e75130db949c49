//! A quantized tensor: codes in their storage type, the shape, and the parameters that map them
//! back to real values. The convenient entry point for quantizing a whole f32 tensor.

use crate::error::Result;
use crate::kernel;
use crate::pack::{self, Packing};
use crate::params::QParams;
use crate::scheme::{Grid, Scheme};

/// How codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    I8,
    U8,
    I16,
    U16,
    Packed(Packing),
}

impl Storage {
    /// The smallest container of the ONNX type system that holds a scheme's grid: packed 2-bit
    /// for 2 bits, packed 4-bit for 3-4 bits, 8-bit for 5-8, 16-bit for 9-16.
    pub fn for_scheme(scheme: &Scheme) -> Storage {
        match (scheme.bits, scheme.signed) {
            (2, true) => Storage::Packed(Packing::Int2),
            (2, false) => Storage::Packed(Packing::UInt2),
            (3..=4, true) => Storage::Packed(Packing::Int4),
            (3..=4, false) => Storage::Packed(Packing::UInt4),
            (5..=8, true) => Storage::I8,
            (5..=8, false) => Storage::U8,
            (_, true) => Storage::I16,
            (_, false) => Storage::U16,
        }
    }

    /// The containers ONNX QuantizeLinear / DequantizeLinear store codes in (opset 21),
    /// narrowest first.
    pub const ONNX: [Storage; 6] = [
        Storage::Packed(Packing::UInt4),
        Storage::Packed(Packing::Int4),
        Storage::U8,
        Storage::I8,
        Storage::U16,
        Storage::I16,
    ];

    /// The narrowest container of `among` whose codes hold `grid` (a 2-bit or 7-bit grid goes
    /// in the container that contains it), if any does.
    pub fn narrowest(grid: Grid, among: &[Storage]) -> Option<Storage> {
        among.iter().copied().find(|s| {
            let g = s.grid();
            grid.qmin >= g.qmin && grid.qmax <= g.qmax
        })
    }

    /// Every code the container can hold: [-128, 127] for int8, [0, 15] for uint4, ...
    pub fn grid(self) -> Grid {
        let (qmin, qmax) = match self {
            Storage::I8 => (i8::MIN.into(), i8::MAX.into()),
            Storage::U8 => (0, u8::MAX.into()),
            Storage::I16 => (i16::MIN.into(), i16::MAX.into()),
            Storage::U16 => (0, u16::MAX.into()),
            Storage::Packed(p) => p.code_range(),
        };
        Grid { qmin, qmax }
    }

    pub fn name(self) -> &'static str {
        match self {
            Storage::I8 => "int8",
            Storage::U8 => "uint8",
            Storage::I16 => "int16",
            Storage::U16 => "uint16",
            Storage::Packed(p) => p.name(),
        }
    }

    /// Bytes that `n` codes occupy.
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            Storage::I8 | Storage::U8 => n,
            Storage::I16 | Storage::U16 => 2 * n,
            Storage::Packed(p) => p.bytes_for(n),
        }
    }
}

/// Codes in their storage type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codes {
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    Packed(Packing, Vec<u8>),
}

/// A quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    pub shape: Vec<usize>,
    pub params: QParams,
    pub codes: Codes,
}

impl QTensor {
    /// Quantizes `x` with min-max parameters of `scheme`, into the scheme's natural storage.
    pub fn quantize(x: &[f32], shape: &[usize], scheme: &Scheme) -> Result<QTensor> {
        let params = QParams::from_data(scheme, x, shape)?;
        QTensor::quantize_with(x, shape, params, Storage::for_scheme(scheme))
    }

    /// Quantizes `x` with given parameters into the given storage.
    pub fn quantize_with(
        x: &[f32],
        shape: &[usize],
        params: QParams,
        storage: Storage,
    ) -> Result<QTensor> {
        fn typed<T: kernel::Code>(x: &[f32], shape: &[usize], p: &QParams) -> Result<Vec<T>> {
            let mut out = vec![T::default(); x.len()];
            kernel::quantize(x, shape, p, &mut out)?;
            Ok(out)
        }
        let codes = match storage {
            Storage::I8 => Codes::I8(typed(x, shape, &params)?),
            Storage::U8 => Codes::U8(typed(x, shape, &params)?),
            Storage::I16 => Codes::I16(typed(x, shape, &params)?),
            Storage::U16 => Codes::U16(typed(x, shape, &params)?),
            Storage::Packed(p) => {
                let mut out = vec![0u8; p.bytes_for(x.len())];
                pack::quantize_packed(x, shape, &params, p, &mut out)?;
                Codes::Packed(p, out)
            }
        };
        Ok(QTensor {
            shape: shape.to_vec(),
            params,
            codes,
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn grid(&self) -> Grid {
        self.params.grid
    }

    pub fn storage(&self) -> Storage {
        match &self.codes {
            Codes::I8(_) => Storage::I8,
            Codes::U8(_) => Storage::U8,
            Codes::I16(_) => Storage::I16,
            Codes::U16(_) => Storage::U16,
            Codes::Packed(p, _) => Storage::Packed(*p),
        }
    }

    /// Bytes the codes occupy (parameters not counted).
    pub fn code_bytes(&self) -> usize {
        self.storage().bytes_for(self.len())
    }

    /// The codes widened to i32, unpacked: for reports and tests.
    pub fn codes_i32(&self) -> Vec<i32> {
        match &self.codes {
            Codes::I8(v) => v.iter().map(|&c| c.into()).collect(),
            Codes::U8(v) => v.iter().map(|&c| c.into()).collect(),
            Codes::I16(v) => v.iter().map(|&c| c.into()).collect(),
            Codes::U16(v) => v.iter().map(|&c| c.into()).collect(),
            Codes::Packed(p, bytes) => {
                let mut c = vec![0i8; self.len()];
                pack::unpack(bytes, *p, &mut c);
                c.into_iter().map(i32::from).collect()
            }
        }
    }

    /// x^ = (q - z)·s for every element.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.len()];
        let (shape, p) = (&self.shape, &self.params);
        match &self.codes {
            Codes::I8(v) => kernel::dequantize(v, shape, p, &mut out)?,
            Codes::U8(v) => kernel::dequantize(v, shape, p, &mut out)?,
            Codes::I16(v) => kernel::dequantize(v, shape, p, &mut out)?,
            Codes::U16(v) => kernel::dequantize(v, shape, p, &mut out)?,
            Codes::Packed(k, v) => pack::dequantize_packed(v, shape, p, *k, &mut out)?,
        }
        Ok(out)
    }
}

impl From<Packing> for Storage {
    fn from(p: Packing) -> Storage {
        Storage::Packed(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowest_container_of_a_grid() {
        let grid = |b: u32, signed: bool| Scheme::new(b).signed(signed).grid();
        let onnx = &Storage::ONNX;
        assert_eq!(
            Storage::narrowest(grid(4, true), onnx),
            Some(Packing::Int4.into())
        );
        assert_eq!(
            Storage::narrowest(grid(4, false), onnx),
            Some(Packing::UInt4.into())
        );
        // A 2-bit grid fits the first 4-bit container that holds it; 7 bits take 8.
        assert_eq!(
            Storage::narrowest(grid(2, false), onnx),
            Some(Packing::UInt4.into())
        );
        assert_eq!(Storage::narrowest(grid(7, true), onnx), Some(Storage::I8));
        assert_eq!(Storage::narrowest(grid(8, false), onnx), Some(Storage::U8));
        assert_eq!(Storage::narrowest(grid(16, true), onnx), Some(Storage::I16));
        let int32 = Grid {
            qmin: i32::MIN,
            qmax: i32::MAX,
        };
        assert_eq!(Storage::narrowest(int32, onnx), None);
        assert_eq!(Storage::I8.grid(), grid(8, true));
        assert_eq!(Storage::Packed(Packing::UInt4).grid(), grid(4, false));
    }
}
