//! `Observer`: zeropoint-core's streaming range estimators over numpy batches, mergeable across
//! workers and picklable (the state travels as [`Observer::to_bytes`]).

use numpy::prelude::*;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use zeropoint_core::observer::{Config, Method, Observer};
use zeropoint_core::{Granularity, QParams, Scheme};

use crate::array::f32_array;
use crate::errors::{raise, scheme as scheme_error, Kind};
use crate::tensor::PyScheme;

/// A range estimator for one tensor: min-max, moving average, percentile, MSE, entropy or
/// cross-entropy, per tensor or per channel (the scheme's axis).
#[pyclass(module = "zeropoint", name = "Observer")]
pub struct PyObserver {
    inner: Observer,
    scheme: Scheme,
}

/// The method `name` with the parameters given as keywords.
pub fn parse_method(name: &str, kw: Option<&Bound<'_, PyDict>>) -> PyResult<Method> {
    let mut m = Method::parse(name).map_err(scheme_error)?;
    let Some(kw) = kw else { return Ok(m) };
    for (key, value) in kw.iter() {
        let key: String = key.extract()?;
        match (&mut m, key.as_str()) {
            (Method::MovingAverage { momentum }, "momentum") => *momentum = value.extract()?,
            (Method::Percentile { lower, .. }, "lower") => *lower = value.extract()?,
            (Method::Percentile { upper, .. }, "upper") => *upper = value.extract()?,
            (Method::AbsPercentile { p }, "percentile") => *p = value.extract()?,
            (Method::Mse { norm }, "norm") => *norm = value.extract()?,
            (Method::Entropy { bins, .. }, "bins") => *bins = value.extract()?,
            (Method::Entropy { quantized_bins, .. }, "quantized_bins") => {
                *quantized_bins = value.extract()?
            }
            _ => {
                return Err(raise(
                    Kind::Scheme,
                    format!("the {} method takes no parameter '{key}'", m.name()),
                ))
            }
        }
    }
    Ok(m)
}

#[pymethods]
impl PyObserver {
    /// `method`: "minmax", "ema" (momentum=0.9), "percentile" (lower=0.01, upper=99.99),
    /// "abs-percentile" (percentile=99.99), "mse" (norm=2), "entropy" (bins=2048,
    /// quantized_bins=128) or "cross-entropy". `scheme` (default: uint8 asymmetric per tensor)
    /// is what the range is for (MSE and cross-entropy search for its grid); a per-channel
    /// scheme observes each index along its axis. `histogram_bins`: the resolution of the
    /// percentile, MSE and entropy histograms.
    #[new]
    #[pyo3(signature = (method="minmax", scheme=None, *, histogram_bins=8192, **params))]
    fn new(
        method: &str,
        scheme: Option<&PyScheme>,
        histogram_bins: usize,
        params: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObserver> {
        let scheme = scheme.map_or(Scheme::asymmetric_unsigned(8), |s| s.inner);
        let mut config = Config::new(parse_method(method, params)?).bins(histogram_bins);
        config.axis = match scheme.granularity {
            Granularity::PerTensor => None,
            Granularity::PerAxis { axis } => Some(axis),
            Granularity::PerBlock { .. } => {
                return Err(raise(
                    Kind::Scheme,
                    "observers estimate per-tensor or per-channel ranges, not per-block ones",
                ))
            }
        };
        let inner = Observer::new(config).map_err(scheme_error)?;
        Ok(PyObserver { inner, scheme })
    }

    /// Observes one batch (any shape; per channel, the channel count must not change).
    fn update(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<()> {
        let x = f32_array(x)?;
        let shape = x.shape().to_vec();
        let ro = x.readonly();
        let xs = ro.as_slice()?;
        let inner = &mut self.inner;
        py.detach(|| inner.update(xs, &shape)).map_err(scheme_error)
    }

    /// Adds what another observer of the same method and scheme saw.
    fn merge(&mut self, other: &PyObserver) -> PyResult<()> {
        if other.scheme != self.scheme {
            return Err(raise(
                Kind::Scheme,
                "observers of different schemes cannot be merged",
            ));
        }
        self.inner.merge(&other.inner).map_err(scheme_error)
    }

    /// The estimated range: (min, max) floats per tensor, two arrays per channel.
    fn range<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let ranges = py
            .detach(|| self.inner.ranges(&self.scheme))
            .map_err(scheme_error)?;
        if self.inner.config().axis.is_none() {
            let (lo, hi) = ranges[0];
            return Ok((
                lo.into_pyobject(py)?.into_any(),
                hi.into_pyobject(py)?.into_any(),
            ));
        }
        let (lo, hi): (Vec<f32>, Vec<f32>) = ranges.into_iter().unzip();
        Ok((
            lo.into_pyarray(py).into_any(),
            hi.into_pyarray(py).into_any(),
        ))
    }

    /// The scheme's scale and zero-point for the estimated range, as arrays shaped as ONNX
    /// lays them out (0-d per tensor, one per channel).
    fn params<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let ranges = py
            .detach(|| self.inner.ranges(&self.scheme))
            .map_err(scheme_error)?;
        let p = QParams::from_ranges(&self.scheme, &ranges).map_err(scheme_error)?;
        let dims: Vec<usize> = match self.inner.config().axis {
            None => vec![],
            Some(_) => vec![p.len()],
        };
        Ok((
            p.scale.into_pyarray(py).reshape(dims.clone())?.into_any(),
            p.zero_point.into_pyarray(py).reshape(dims)?.into_any(),
        ))
    }

    #[getter]
    fn method(&self) -> String {
        self.inner.config().method.to_string()
    }

    #[getter]
    fn scheme(&self) -> PyScheme {
        PyScheme { inner: self.scheme }
    }

    /// Bytes of state held (constant in the number of samples seen).
    #[getter]
    fn state_bytes(&self) -> usize {
        self.inner.state_bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "Observer('{}', {})",
            self.inner.config().method,
            PyScheme { inner: self.scheme }.inner
        )
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Reduced<'py>> {
        let py = slf.py();
        let me = slf.borrow();
        let restore = py
            .import("zeropoint._zeropoint")?
            .getattr("_observer_from_state")?;
        let state = PyBytes::new(py, &me.inner.to_bytes());
        Ok((restore, (state, PyScheme { inner: me.scheme })))
    }
}

/// What pickle stores: the constructor and its arguments (the state's bytes, the scheme).
type Reduced<'py> = (Bound<'py, PyAny>, (Bound<'py, PyBytes>, PyScheme));

/// An observer from the state `__reduce__` saved (pickle's constructor).
#[pyfunction]
fn _observer_from_state(state: &[u8], scheme: &PyScheme) -> PyResult<PyObserver> {
    let inner = Observer::from_bytes(state).map_err(scheme_error)?;
    Ok(PyObserver {
        inner,
        scheme: scheme.inner,
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyObserver>()?;
    m.add_function(wrap_pyfunction!(_observer_from_state, m)?)?;
    Ok(())
}
