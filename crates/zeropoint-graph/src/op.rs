//! Operators as a type: a node's `op_type` and domain are parsed once, when the graph is read,
//! into an [`Op`], so that passes and the executor match on variants instead of comparing strings
//! (and an operator of another domain can never pass for a standard one of the same name).

use std::fmt;

macro_rules! operators {
    ($($op:ident),* $(,)?) => {
        /// An operator of the default ONNX domain that zeropoint knows by name. Anything else, an
        /// unknown `op_type` or any operator of another domain, is [`Op::Other`], kept verbatim.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        // Variants are spelled as the `op_type` (LSTM, GRU, RNN).
        #[allow(clippy::upper_case_acronyms)]
        pub enum Op {
            $($op,)*
            Other(String),
        }

        impl Op {
            /// The operator of `op_type` in `domain` ("" and "ai.onnx" are the default domain).
            pub fn parse(op_type: &str, domain: &str) -> Op {
                if !matches!(domain, "" | "ai.onnx") {
                    return Op::Other(op_type.to_string());
                }
                match op_type {
                    $(stringify!($op) => Op::$op,)*
                    other => Op::Other(other.to_string()),
                }
            }

            /// The `op_type` as ONNX spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Op::$op => stringify!($op),)*
                    Op::Other(name) => name,
                }
            }
        }
    };
}

operators! {
    Abs, Add, And, ArgMax, ArgMin, Atan, AveragePool, BatchNormalization, Cast, Ceil, Clip, Concat,
    Constant, ConstantOfShape, Conv, ConvInteger, ConvTranspose, Cos, DepthToSpace,
    DequantizeLinear, Div,
    Dropout, DynamicQuantizeLinear, Einsum,
    Elu, Equal, Erf, Exp, Expand, Flatten, Floor, Gather, GatherElements, GatherND, Gelu, Gemm,
    GlobalAveragePool, GlobalMaxPool, Greater, GreaterOrEqual, HardSigmoid, HardSwish, Identity,
    InstanceNormalization, IsInf, IsNaN,
    LayerNormalization, LeakyRelu, Less, LessOrEqual, Log, LogSoftmax, MatMul, MatMulInteger, Max,
    MaxPool,
    Mean, Min, Mod, Mul, Neg, Not, OneHot, Or, PRelu, Pad, Pow, QuantizeLinear, Range, Reciprocal,
    ReduceL1, ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceMax, ReduceMean, ReduceMin,
    ReduceProd, ReduceSum, ReduceSumSquare, Relu, Reshape, Resize, Scatter, ScatterElements,
    ScatterND, Selu, Shape, Sigmoid, Sign,
    Sin, Size, Slice, Softmax, Softplus, SpaceToDepth, Split, Sqrt, Squeeze, Sub, Sum, Tanh, Tile,
    TopK,
    Transpose, Trilu, Unsqueeze, Where, Xor,
    // Operators named as ONNX spells them: the recurrent ones, the Fourier transforms and LRN.
    GRU, LSTM, RNN, DFT, STFT, LRN,
    // Control flow: operators with subgraphs.
    If, Loop, Scan,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_domains_count() {
        assert_eq!(Op::parse("Conv", ""), Op::Conv);
        assert_eq!(Op::parse("Conv", "ai.onnx"), Op::Conv);
        assert_eq!(Op::Conv.as_str(), "Conv");
        assert_eq!(Op::parse("ReduceL2", "").as_str(), "ReduceL2");
        // A contrib operator of the same name is not the standard one.
        assert_eq!(Op::parse("Gelu", "com.microsoft"), Op::Other("Gelu".into()));
        assert_eq!(Op::parse("Mish", ""), Op::Other("Mish".into()));
        assert_eq!(Op::parse("Mish", "").to_string(), "Mish");
    }
}
