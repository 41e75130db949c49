//! The ONNX protobuf types (`ModelProto`, `GraphProto`, `TensorProto`, ...), generated from the
//! official `onnx.proto` at build time (see build.rs).

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
