//! Generates the ONNX protobuf types from the official onnx.proto with a pure-Rust compiler
//! (protox), so that building zeropoint needs no protoc.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("cannot compile proto/onnx.proto: {e}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("cannot generate Rust code for onnx.proto: {e}"));
}
