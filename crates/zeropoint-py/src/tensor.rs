//! Tensors: `Scheme`, parameters from a range or from data, quantize / dequantize / fake-quant
//! through zeropoint-core's kernels (bit-exact with ONNX QuantizeLinear / DequantizeLinear), and
//! `explain`.
//!
//! Codes come back in the narrowest container of the scheme's grid (int8 / uint8 / int16 /
//! uint16), or, at 2 to 4 bits, packed as ONNX packs INT4/INT2: a flat uint8 array, element 0 in
//! the lowest bits of byte 0, the last byte padded with zero bits. `storage="int8"` (or another
//! container wide enough) keeps one code per element instead.

use numpy::prelude::*;
use numpy::{Element, PyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use zeropoint_core::kernel::{self, Code};
use zeropoint_core::metrics;
use zeropoint_core::{pack, Granularity, Layout, Packing, QParam, QParams, Scheme, Storage};
use zeropoint_quant::analysis::explain::Explanation;

use crate::array::{f32_array, f32_values, i32_values};
use crate::errors::{raise, scheme as scheme_error, Kind};

/// A quantization scheme: bit-width, grid, symmetry and granularity.
#[pyclass(frozen, eq, module = "zeropoint", name = "Scheme")]
#[derive(Clone, PartialEq)]
pub struct PyScheme {
    pub inner: Scheme,
}

#[pymethods]
impl PyScheme {
    /// `signed` defaults to `symmetric` (symmetric grids are signed, asymmetric ones unsigned).
    #[new]
    #[pyo3(signature = (bits=8, symmetric=false, signed=None, narrow=false, pow2=false,
                        granularity="per-tensor", axis=0, block_size=32))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        bits: u32,
        symmetric: bool,
        signed: Option<bool>,
        narrow: bool,
        pow2: bool,
        granularity: &str,
        axis: usize,
        block_size: usize,
    ) -> PyResult<PyScheme> {
        let granularity = match granularity {
            "per-tensor" | "tensor" => Granularity::PerTensor,
            "per-channel" | "per-axis" | "channel" | "axis" => Granularity::PerAxis { axis },
            "per-block" | "block" => Granularity::PerBlock {
                axis,
                block: block_size,
            },
            other => {
                return Err(raise(
                    Kind::Scheme,
                    format!("granularity '{other}' is not per-tensor, per-channel or per-block"),
                ))
            }
        };
        let inner = Scheme::new(bits)
            .symmetric(symmetric)
            .signed(signed.unwrap_or(symmetric))
            .narrow(narrow)
            .pow2_scale(pow2)
            .granularity(granularity);
        inner.validate().map_err(scheme_error)?;
        Ok(PyScheme { inner })
    }

    #[getter]
    fn bits(&self) -> u32 {
        self.inner.bits
    }
    #[getter]
    fn symmetric(&self) -> bool {
        self.inner.symmetric
    }
    #[getter]
    fn signed(&self) -> bool {
        self.inner.signed
    }
    #[getter]
    fn narrow(&self) -> bool {
        self.inner.narrow
    }
    #[getter]
    fn pow2(&self) -> bool {
        self.inner.pow2_scale
    }
    /// "per-tensor", "per-channel" or "per-block".
    #[getter]
    fn granularity(&self) -> &'static str {
        match self.inner.granularity {
            Granularity::PerTensor => "per-tensor",
            Granularity::PerAxis { .. } => "per-channel",
            Granularity::PerBlock { .. } => "per-block",
        }
    }
    /// The axis of per-channel and per-block parameters (None per tensor).
    #[getter]
    fn axis(&self) -> Option<usize> {
        match self.inner.granularity {
            Granularity::PerTensor => None,
            Granularity::PerAxis { axis } | Granularity::PerBlock { axis, .. } => Some(axis),
        }
    }
    #[getter]
    fn block_size(&self) -> Option<usize> {
        match self.inner.granularity {
            Granularity::PerBlock { block, .. } => Some(block),
            _ => None,
        }
    }
    /// The grid's ends (qmin, qmax).
    #[getter]
    fn grid(&self) -> (i32, i32) {
        let g = self.inner.grid();
        (g.qmin, g.qmax)
    }
    /// The default container of the codes: "int8", "uint8", "int16", "uint16", "int4", ...
    #[getter]
    fn storage(&self) -> &'static str {
        Storage::for_scheme(&self.inner).name()
    }

    fn __repr__(&self) -> String {
        let s = &self.inner;
        let mut text = format!(
            "Scheme(bits={}, symmetric={}, signed={}",
            s.bits,
            py_bool(s.symmetric),
            py_bool(s.signed)
        );
        if s.narrow {
            text += ", narrow=True";
        }
        if s.pow2_scale {
            text += ", pow2=True";
        }
        text += &match s.granularity {
            Granularity::PerTensor => ", granularity='per-tensor')".to_string(),
            Granularity::PerAxis { axis } => format!(", granularity='per-channel', axis={axis})"),
            Granularity::PerBlock { axis, block } => {
                format!(", granularity='per-block', axis={axis}, block_size={block})")
            }
        };
        text
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.__repr__().hash(&mut h);
        h.finish()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, SchemeArgs)> {
        let s = slf.get();
        let args = (
            s.inner.bits,
            s.inner.symmetric,
            s.inner.signed,
            s.inner.narrow,
            s.inner.pow2_scale,
            s.granularity(),
            s.axis().unwrap_or(0),
            s.block_size().unwrap_or(32),
        );
        Ok((slf.get_type().into_any(), args))
    }
}

/// The constructor's arguments, in order (what pickle stores).
type SchemeArgs = (u32, bool, bool, bool, bool, &'static str, usize, usize);

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The scheme's parameters from the caller's scale and zero-point (zeros when None).
fn qparams(
    scheme: &Scheme,
    scale: &Bound<'_, PyAny>,
    zero_point: Option<&Bound<'_, PyAny>>,
) -> PyResult<QParams> {
    let scale = f32_values(scale)?;
    let zero_point = match zero_point {
        Some(z) => i32_values(z)?,
        None => vec![0; scale.len()],
    };
    QParams::new(scheme.granularity, scheme.grid(), scale, zero_point).map_err(scheme_error)
}

/// The container named `name`, or the scheme's own.
fn storage_for(scheme: &Scheme, name: Option<&str>) -> PyResult<Storage> {
    let Some(name) = name else {
        return Ok(Storage::for_scheme(scheme));
    };
    let all = [
        Storage::I8,
        Storage::U8,
        Storage::I16,
        Storage::U16,
        Storage::Packed(Packing::Int4),
        Storage::Packed(Packing::UInt4),
        Storage::Packed(Packing::Int2),
        Storage::Packed(Packing::UInt2),
    ];
    all.into_iter().find(|s| s.name() == name).ok_or_else(|| {
        raise(
            Kind::Scheme,
            format!(
                "storage '{name}' is not int8, uint8, int16, uint16, int4, uint4, int2 or uint2"
            ),
        )
    })
}

/// `out` checked to be a C-contiguous array of `T` of `shape`, or a new one.
fn output<'py, T: Element>(
    py: Python<'py>,
    out: Option<Bound<'py, PyAny>>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let Some(out) = out else {
        // SAFETY: every element is written by the kernel before the array is returned; on
        // error the array is dropped unread.
        return Ok(unsafe { PyArrayDyn::<T>::new(py, shape.to_vec(), false) });
    };
    let want = || T::get_dtype(py).to_string();
    let a = out.cast_into::<PyArrayDyn<T>>().map_err(|e| {
        raise(
            Kind::Scheme,
            format!(
                "out must be a {} array ({})",
                want(),
                e.into_inner().get_type()
            ),
        )
    })?;
    if a.shape() != shape || !a.is_c_contiguous() {
        return Err(raise(
            Kind::Scheme,
            format!(
                "out has shape {:?}{}; it must be a C-contiguous {} array of shape {shape:?}",
                a.shape(),
                if a.is_c_contiguous() {
                    ""
                } else {
                    " (not contiguous)"
                },
                want()
            ),
        ));
    }
    Ok(a)
}

/// Runs `kernel` over `out`'s elements with the GIL released, and returns `out`.
fn fill<'py, T: Element + Send>(
    out: Bound<'py, PyArrayDyn<T>>,
    kernel: impl FnOnce(&mut [T]) -> zeropoint_core::Result<()> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    {
        let mut w = out.try_readwrite()?;
        let o = w.as_slice_mut()?;
        out.py().detach(|| kernel(o)).map_err(scheme_error)?;
    }
    Ok(out.into_any())
}

fn codes<'py, T: Code + Element>(
    py: Python<'py>,
    x: &[f32],
    shape: &[usize],
    params: &QParams,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let out = output::<T>(py, out, shape)?;
    fill(out, |o| kernel::quantize(x, shape, params, o))
}

fn packed<'py>(
    py: Python<'py>,
    x: &[f32],
    shape: &[usize],
    params: &QParams,
    packing: Packing,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let out = output::<u8>(py, out, &[packing.bytes_for(x.len())])?;
    fill(out, |o| pack::quantize_packed(x, shape, params, packing, o))
}

/// Quantizes `x` with the scheme and its parameters; codes in the scheme's container (or
/// `storage`), written into `out` when given.
#[pyfunction]
#[pyo3(signature = (x, scheme, scale, zero_point=None, *, storage=None, out=None))]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scheme: &PyScheme,
    scale: &Bound<'py, PyAny>,
    zero_point: Option<&Bound<'py, PyAny>>,
    storage: Option<&str>,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let s = &scheme.inner;
    let params = qparams(s, scale, zero_point)?;
    let x = f32_array(x)?;
    let shape = x.shape().to_vec();
    let ro = x.readonly();
    let xs = ro.as_slice()?;
    match storage_for(s, storage)? {
        Storage::I8 => codes::<i8>(py, xs, &shape, &params, out),
        Storage::U8 => codes::<u8>(py, xs, &shape, &params, out),
        Storage::I16 => codes::<i16>(py, xs, &shape, &params, out),
        Storage::U16 => codes::<u16>(py, xs, &shape, &params, out),
        Storage::Packed(p) => packed(py, xs, &shape, &params, p, out),
    }
}

fn dequantize_codes<'py, T: Code + Element>(
    py: Python<'py>,
    q: &Bound<'py, PyArrayDyn<T>>,
    params: &QParams,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = q.shape().to_vec();
    let ro = q.try_readonly()?;
    let qs = ro
        .as_slice()
        .map_err(|_| raise(Kind::Scheme, "the codes must be a C-contiguous array"))?;
    let out = output::<f32>(py, out, &shape)?;
    fill(out, |o| kernel::dequantize(qs, &shape, params, o))
}

/// Codes back to float32: `q` one code per element (int8 / uint8 / int16 / uint16), or, with
/// `shape`, the packed bytes of a tensor of that shape in the scheme's packed container.
#[pyfunction]
#[pyo3(signature = (q, scheme, scale, zero_point=None, *, shape=None, out=None))]
fn dequantize<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scheme: &PyScheme,
    scale: &Bound<'py, PyAny>,
    zero_point: Option<&Bound<'py, PyAny>>,
    shape: Option<Vec<usize>>,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let s = &scheme.inner;
    let params = qparams(s, scale, zero_point)?;
    if let Some(shape) = shape {
        let Storage::Packed(packing) = Storage::for_scheme(s) else {
            return Err(raise(
                Kind::Scheme,
                format!("shape= is for packed codes, and {s} codes are not packed"),
            ));
        };
        let q = q
            .cast::<PyArrayDyn<u8>>()
            .map_err(|_| raise(Kind::Scheme, "packed codes must be a uint8 array"))?;
        let ro = q.try_readonly()?;
        let qs = ro
            .as_slice()
            .map_err(|_| raise(Kind::Scheme, "the codes must be a C-contiguous array"))?;
        let out = output::<f32>(py, out, &shape)?;
        return fill(out, |o| {
            pack::dequantize_packed(qs, &shape, &params, packing, o)
        });
    }
    if let Ok(q) = q.cast::<PyArrayDyn<i8>>() {
        dequantize_codes(py, q, &params, out)
    } else if let Ok(q) = q.cast::<PyArrayDyn<u8>>() {
        dequantize_codes(py, q, &params, out)
    } else if let Ok(q) = q.cast::<PyArrayDyn<i16>>() {
        dequantize_codes(py, q, &params, out)
    } else if let Ok(q) = q.cast::<PyArrayDyn<u16>>() {
        dequantize_codes(py, q, &params, out)
    } else {
        Err(raise(
            Kind::Scheme,
            "codes must be an int8, uint8, int16 or uint16 numpy array (packed codes: pass shape=)",
        ))
    }
}

/// dequantize(quantize(x)) in one pass, as float32: into a new array, or into `out` (which may
/// be `x` itself, a C-contiguous float32 array, for in place).
#[pyfunction]
#[pyo3(signature = (x, scheme, scale, zero_point=None, *, out=None))]
fn fake_quant<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scheme: &PyScheme,
    scale: &Bound<'py, PyAny>,
    zero_point: Option<&Bound<'py, PyAny>>,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let params = qparams(&scheme.inner, scale, zero_point)?;
    let in_place = out.as_ref().is_some_and(|o| o.is(x));
    let xa = f32_array(x)?;
    let shape = xa.shape().to_vec();
    let out = if in_place {
        output::<f32>(py, out, &shape)?
    } else {
        let out = output::<f32>(py, out, &shape)?;
        {
            let ro = xa.readonly();
            let mut w = out.try_readwrite()?;
            w.as_slice_mut()?.copy_from_slice(ro.as_slice()?);
        }
        out
    };
    fill(out, |o| kernel::fake_quant_in_place(o, &shape, &params))
}

/// The parameters that cover [min, max]: floats for scalars, arrays (one pair per channel or
/// block, in the order given) for arrays.
#[pyfunction]
fn params_from_range<'py>(
    py: Python<'py>,
    scheme: &PyScheme,
    min: &Bound<'py, PyAny>,
    max: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let s = &scheme.inner;
    if let (Ok(lo), Ok(hi)) = (min.extract::<f32>(), max.extract::<f32>()) {
        let p = QParam::from_range(s, lo, hi).map_err(scheme_error)?;
        return Ok((
            p.scale.into_pyobject(py)?.into_any(),
            p.zero_point.into_pyobject(py)?.into_any(),
        ));
    }
    let (lo, hi) = (f32_values(min)?, f32_values(max)?);
    if lo.len() != hi.len() {
        return Err(raise(
            Kind::Scheme,
            format!("{} minima but {} maxima", lo.len(), hi.len()),
        ));
    }
    let ranges: Vec<(f32, f32)> = lo.into_iter().zip(hi).collect();
    let p = QParams::from_ranges(s, &ranges).map_err(scheme_error)?;
    Ok((
        p.scale.into_pyarray(py).into_any(),
        p.zero_point.into_pyarray(py).into_any(),
    ))
}

/// Min-max parameters of the data `x` at the scheme's granularity, shaped as ONNX lays them
/// out (a 0-d array per tensor, one per channel, the blocked shape per block).
#[pyfunction]
fn params_from_data<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scheme: &PyScheme,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let s = scheme.inner;
    let x = f32_array(x)?;
    let shape = x.shape().to_vec();
    let layout = Layout::new(&shape, s.granularity).map_err(scheme_error)?;
    let ro = x.readonly();
    let xs = ro.as_slice()?;
    let p = py
        .detach(|| QParams::from_data(&s, xs, &shape))
        .map_err(scheme_error)?;
    let dims = layout.param_shape().to_vec();
    Ok((
        p.scale.into_pyarray(py).reshape(dims.clone())?.into_any(),
        p.zero_point.into_pyarray(py).reshape(dims)?.into_any(),
    ))
}

/// What a quantizer of [min, max] (or of the data's range) does, as a dict that
/// `zeropoint.explain` turns into an `Explanation`.
#[pyfunction]
#[pyo3(signature = (scheme, min=None, max=None, data=None))]
fn explain<'py>(
    py: Python<'py>,
    scheme: &PyScheme,
    min: Option<f32>,
    max: Option<f32>,
    data: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let s = Scheme {
        granularity: Granularity::PerTensor,
        ..scheme.inner
    };
    let data = data.map(f32_array).transpose()?;
    let ro = data.as_ref().map(|d| d.readonly());
    let xs = ro.as_ref().map(|r| r.as_slice()).transpose()?;
    let (min, max) = match (min, max, xs) {
        (Some(lo), Some(hi), _) => (lo, hi),
        (None, None, Some(x)) => {
            let layout = Layout::new(&[x.len()], Granularity::PerTensor).map_err(scheme_error)?;
            zeropoint_core::params::ranges(x, &layout).map_err(scheme_error)?[0]
        }
        _ => {
            return Err(raise(
                Kind::Scheme,
                "explain needs min and max, or data (or both)",
            ))
        }
    };
    let param = QParam::from_range(&s, min, max).map_err(scheme_error)?;
    let e = py.detach(|| Explanation::new(s, min, max, param, xs, "the range given".into()));
    explanation_dict(py, &e, xs, param)
}

fn explanation_dict<'py>(
    py: Python<'py>,
    e: &Explanation,
    data: Option<&[f32]>,
    param: QParam,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let grid = e.scheme.grid();
    d.set_item("scheme", PyScheme { inner: e.scheme })?;
    d.set_item("min", e.min)?;
    d.set_item("max", e.max)?;
    d.set_item("scale", param.scale)?;
    d.set_item("zero_point", param.zero_point)?;
    d.set_item("offset", param.offset())?;
    d.set_item("grid", (grid.qmin, grid.qmax))?;
    d.set_item("real_range", param.real_range(grid))?;
    let examples: Vec<_> = e
        .examples
        .iter()
        .map(|x| (x.x, x.x_over_s, x.rounded, x.q, x.xhat, x.note))
        .collect();
    d.set_item("examples", examples)?;
    let occupancy = |o: &Option<zeropoint_quant::analysis::explain::Occupancy>| {
        o.as_ref()
            .map(|o| (o.used(), o.levels(), o.param.scale, o.param.zero_point))
    };
    d.set_item("asymmetric", occupancy(&e.asym))?;
    d.set_item("symmetric", occupancy(&e.sym))?;
    if let (Some(x), Some(diag)) = (data, &e.diagnosis) {
        let params = QParams::new(
            Granularity::PerTensor,
            grid,
            vec![param.scale],
            vec![param.zero_point],
        )
        .map_err(scheme_error)?;
        let (err, split) = py
            .detach(|| metrics::quantization_error(x, &[x.len()], &params))
            .map_err(scheme_error)?;
        d.set_item("mse", err.mse)?;
        d.set_item("sqnr_db", err.sqnr_db)?;
        d.set_item("max_error", err.max_abs)?;
        d.set_item("clip_mse", split.clip_mse())?;
        d.set_item("round_mse", split.round_mse())?;
        d.set_item("clipped_fraction", split.clipped_fraction())?;
        d.set_item("levels_per_std", diag.levels_per_std)?;
        d.set_item("verdict", diag.verdict.name())?;
        let clips: Vec<_> = diag
            .clips
            .iter()
            .map(|c| {
                (
                    c.label.clone(),
                    c.lo,
                    c.hi,
                    c.scale,
                    c.sqnr,
                    c.clipped,
                    c.clip_mse,
                    c.round_mse,
                )
            })
            .collect();
        d.set_item("clips", clips)?;
    }
    Ok(d)
}

/// The fastest of `repeats` runs of the Rust kernel `op` ("quantize", "dequantize" or
/// "fake_quant", per tensor, 8-bit) on `x` into a buffer allocated once, with no Python between
/// runs: the baseline scripts/bench_python.py measures the bindings' overhead against.
#[pyfunction]
fn _kernel_seconds(
    py: Python<'_>,
    op: &str,
    x: &Bound<'_, PyAny>,
    scheme: &PyScheme,
    scale: f32,
    zero_point: i32,
    repeats: usize,
) -> PyResult<f64> {
    let s = scheme.inner;
    let params = QParams::new(s.granularity, s.grid(), vec![scale], vec![zero_point])
        .map_err(scheme_error)?;
    let x = f32_array(x)?.readonly().as_slice()?.to_vec();
    let shape = [x.len()];
    let op = op.to_string();
    py.detach(move || {
        let mut codes = vec![0u8; x.len()];
        let mut floats = vec![0f32; x.len()];
        kernel::quantize(&x, &shape, &params, &mut codes).map_err(scheme_error)?;
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats.max(1) {
            let start = std::time::Instant::now();
            match op.as_str() {
                "quantize" => kernel::quantize(&x, &shape, &params, &mut codes),
                "dequantize" => kernel::dequantize(&codes, &shape, &params, &mut floats),
                "fake_quant" => {
                    floats.copy_from_slice(&x);
                    kernel::fake_quant_in_place(&mut floats, &shape, &params)
                }
                other => return Err(raise(Kind::Scheme, format!("unknown kernel '{other}'"))),
            }
            .map_err(scheme_error)?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(times.into_iter().fold(f64::INFINITY, f64::min))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_kernel_seconds, m)?)?;
    m.add_class::<PyScheme>()?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(fake_quant, m)?)?;
    m.add_function(wrap_pyfunction!(params_from_range, m)?)?;
    m.add_function(wrap_pyfunction!(params_from_data, m)?)?;
    m.add_function(wrap_pyfunction!(explain, m)?)?;
    Ok(())
}
