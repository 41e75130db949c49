//! The one error type of zeropoint-engine. An operator or a value conversion says what went wrong
//! ([`Error::Op`]); the executor wraps it with where (the model file and the node, input or
//! output) as a [`zeropoint_graph::Error`], so that every error a caller sees reads
//! `model.onnx: node 'conv1' (Conv): kernel [3, 3] is larger than the padded input`.

/// What went wrong while running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model or file error, with its place in the model.
    #[error(transparent)]
    Graph(#[from] zeropoint_graph::Error),
    /// What went wrong inside an operator or a value conversion; the caller says where.
    #[error("{0}")]
    Op(String),
    /// A quantizer's parameters or kernel refused the operands (QuantizeLinear and friends).
    #[error(transparent)]
    Core(#[from] zeropoint_core::Error),
}

impl From<zeropoint_onnx::Error> for Error {
    fn from(e: zeropoint_onnx::Error) -> Error {
        Error::Graph(e.into())
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Error {
        // candle's messages can span lines (backtraces): keep the first.
        Error::Op(e.to_string().lines().next().unwrap_or("").to_string())
    }
}

impl From<String> for Error {
    fn from(m: String) -> Error {
        Error::Op(m)
    }
}

impl From<&str> for Error {
    fn from(m: &str) -> Error {
        Error::Op(m.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
