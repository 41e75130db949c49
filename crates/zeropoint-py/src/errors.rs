//! zeropoint's errors as the package's exceptions (`zeropoint/_errors.py`): the message is the
//! error's chain joined by ": ", the one line the CLI prints.

use pyo3::prelude::*;

/// The exception classes, by their name in `zeropoint._errors`.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A scheme, parameters or arrays that do not fit together (also a ValueError).
    Scheme,
    /// A model file that cannot be read, run or quantized.
    Model,
    /// Calibration or evaluation data.
    Data,
    /// A GGUF file or its quantization.
    Gguf,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Scheme => "SchemeError",
            Kind::Model => "ModelError",
            Kind::Data => "DataError",
            Kind::Gguf => "GgufError",
        }
    }
}

/// The exception of `kind` with `message`.
pub fn raise(kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| {
        match py
            .import("zeropoint._errors")
            .and_then(|m| m.getattr(kind.class()))
            .and_then(|class| class.call1((message.clone(),)))
        {
            Ok(e) => PyErr::from_value(e),
            // The package is broken or not imported through `zeropoint`: still one line.
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(message),
        }
    })
}

/// `e` and its sources joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        // Transparent wrappers repeat their source's text: say it once.
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// A core error (scheme, parameters, lengths) as a SchemeError.
pub fn scheme(e: zeropoint_core::Error) -> PyErr {
    raise(Kind::Scheme, e.to_string())
}

/// A quantization error: a ModelError when it is about the model (its message starts with the
/// model's path), else a DataError (it names a data file, or `<memory>` for arrays).
pub fn quant(model: &std::path::Path, e: zeropoint_quant::Error) -> PyErr {
    let text = chain(&e);
    let about_model = text.starts_with(&model.display().to_string())
        || matches!(e, zeropoint_quant::Error::Environment(_));
    raise(if about_model { Kind::Model } else { Kind::Data }, text)
}
