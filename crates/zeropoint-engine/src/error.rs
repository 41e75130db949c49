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
        Error::Op(candle_message(e))
    }
}

/// candle's error as one line. Under RUST_BACKTRACE candle attaches a backtrace to each error,
/// and formatting it symbolizes the whole stack (100 ms on the first error, milliseconds after):
/// it is dropped unformatted. Other messages can span lines too: the first is kept.
pub fn candle_message(mut e: candle_core::Error) -> String {
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = *inner;
    }
    e.to_string().lines().next().unwrap_or("").to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_become_one_line_without_their_backtrace() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch\nin matmul".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(candle_message(e), "shape mismatch");
        let e: Error = candle_core::Error::Msg("plain".into()).into();
        assert_eq!(e.to_string(), "plain");
    }
}
