//! zeropoint's kernels against the ONNX specification: every case is quantized and dequantized
//! here, then tests/python/onnx_reference.py runs QuantizeLinear -> DequantizeLinear on the same
//! inputs and parameters with onnx's ReferenceEvaluator and with onnxruntime, and requires
//! bit-identical codes, packed bytes and floats.

#[path = "../../../tests/support.rs"]
mod support;

use std::fs;
use std::path::Path;

use support::{run_python, Rng};
use zeropoint_core::{fake_quant, Granularity, Layout, Packing, QParams, QTensor, Scheme, Storage};

struct Case {
    name: String,
    x: Vec<f32>,
    shape: Vec<usize>,
    params: QParams,
    storage: Storage,
    /// "reference", "onnxruntime" or "both".
    check: &'static str,
}

fn storage_of(scheme: &Scheme) -> Storage {
    Storage::for_scheme(scheme)
}

/// A case with min-max parameters from the data.
fn from_data(name: &str, x: Vec<f32>, shape: &[usize], scheme: Scheme) -> Case {
    let params = QParams::from_data(&scheme, &x, shape).unwrap();
    Case {
        name: name.into(),
        x,
        shape: shape.to_vec(),
        params,
        storage: storage_of(&scheme),
        check: "both",
    }
}

/// A per-tensor case with given scale and zero-point.
fn fixed(name: &str, x: Vec<f32>, scheme: Scheme, scale: f32, zp: i32, storage: Storage) -> Case {
    let params =
        QParams::new(Granularity::PerTensor, scheme.grid(), vec![scale], vec![zp]).unwrap();
    Case {
        name: name.into(),
        shape: vec![x.len()],
        x,
        params,
        storage,
        check: "both",
    }
}

fn random(rng: &mut Rng, n: usize, spread: f32, shift: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * spread + shift).collect()
}

fn cases() -> Vec<Case> {
    let mut rng = Rng::new(2106_08295);
    let mut cases = Vec::new();

    // Random data, min-max parameters, every storage type.
    let schemes = [
        ("int8_sym", Scheme::new(8)),
        (
            "int8_asym_narrow",
            Scheme::new(8).symmetric(false).narrow(true),
        ),
        ("uint8_asym", Scheme::asymmetric_unsigned(8)),
        ("uint8_sym", Scheme::new(8).signed(false)),
        ("int16_asym", Scheme::new(16).symmetric(false)),
        ("uint16_asym", Scheme::asymmetric_unsigned(16)),
        ("int4_sym", Scheme::new(4)),
        ("uint4_asym", Scheme::asymmetric_unsigned(4)),
        ("int3_in_int4", Scheme::new(3).symmetric(false)),
        ("int2_sym", Scheme::new(2)),
        ("uint2_asym", Scheme::asymmetric_unsigned(2)),
        ("int8_pow2", Scheme::new(8).pow2_scale(true)),
    ];
    for (name, scheme) in schemes {
        let x = random(&mut rng, 4099, 2.5, 0.7);
        cases.push(from_data(&format!("random_{name}"), x, &[4099], scheme));
    }

    // Exact ties at .5: with a power-of-two scale x / s is exact; with s = 0.1 it tests that the
    // division is a true division (x * (1/s) rounds differently on some of these).
    let ties: Vec<f32> = (-300..300).map(|k| (k as f32 + 0.5) * 0.25).collect();
    cases.push(fixed(
        "ties_int8_pow2",
        ties.clone(),
        Scheme::new(8).symmetric(false),
        0.25,
        3,
        Storage::I8,
    ));
    cases.push(fixed(
        "ties_uint8_pow2",
        ties,
        Scheme::asymmetric_unsigned(8),
        0.25,
        128,
        Storage::U8,
    ));
    let ties: Vec<f32> = (-300..300).map(|k| (k as f32 + 0.5) * 0.1).collect();
    cases.push(fixed(
        "ties_int8_tenth",
        ties.clone(),
        Scheme::new(8).symmetric(false),
        0.1,
        -7,
        Storage::I8,
    ));
    cases.push(fixed(
        "ties_int16_tenth",
        ties,
        Scheme::new(16).symmetric(false),
        0.1,
        11,
        Storage::I16,
    ));
    let ties: Vec<f32> = (-20..20).map(|k| (k as f32 + 0.5) * 0.5).collect();
    cases.push(fixed(
        "ties_int4",
        ties.clone(),
        Scheme::new(4).symmetric(false),
        0.5,
        1,
        Packing::Int4.into(),
    ));
    cases.push(fixed(
        "ties_uint4",
        ties,
        Scheme::asymmetric_unsigned(4),
        0.5,
        8,
        Packing::UInt4.into(),
    ));

    // Saturation on both sides (|x / s| stays below 2^31, where the reference is defined).
    let wide: Vec<f32> = (0..2001).map(|k| (k as f32 - 1000.0) * 1000.0).collect();
    for (name, scheme, zp, storage) in [
        ("int8", Scheme::new(8).symmetric(false), 5, Storage::I8),
        ("uint8", Scheme::asymmetric_unsigned(8), 200, Storage::U8),
        (
            "int16",
            Scheme::new(16).symmetric(false),
            -100,
            Storage::I16,
        ),
        (
            "uint16",
            Scheme::asymmetric_unsigned(16),
            30000,
            Storage::U16,
        ),
        (
            "int4",
            Scheme::new(4).symmetric(false),
            -3,
            Packing::Int4.into(),
        ),
        (
            "uint4",
            Scheme::asymmetric_unsigned(4),
            2,
            Packing::UInt4.into(),
        ),
        (
            "int2",
            Scheme::new(2).symmetric(false),
            0,
            Packing::Int2.into(),
        ),
        (
            "uint2",
            Scheme::asymmetric_unsigned(2),
            1,
            Packing::UInt2.into(),
        ),
    ] {
        cases.push(fixed(
            &format!("saturate_{name}"),
            wide.clone(),
            scheme,
            0.5,
            zp,
            storage,
        ));
    }

    // Per-axis: every axis of a rank-3 tensor.
    for axis in 0..3 {
        let x = random(&mut rng, 4 * 3 * 5, 1.0, 0.1);
        cases.push(from_data(
            &format!("axis{axis}_int8_sym"),
            x.clone(),
            &[4, 3, 5],
            Scheme::new(8).per_axis(axis),
        ));
        cases.push(from_data(
            &format!("axis{axis}_uint8_asym"),
            x.clone(),
            &[4, 3, 5],
            Scheme::asymmetric_unsigned(8).per_axis(axis),
        ));
        cases.push(from_data(
            &format!("axis{axis}_int4_sym"),
            x,
            &[4, 3, 5],
            Scheme::new(4).per_axis(axis),
        ));
    }
    let x = random(&mut rng, 64 * 9, 0.3, 0.0);
    cases.push(from_data(
        "axis0_int16_conv",
        x,
        &[8, 2, 6, 6],
        Scheme::new(16).per_axis(0),
    ));

    // Blocked: along the last axis and along a leading one, with a ragged last block.
    let x = random(&mut rng, 6 * 10, 1.0, 0.0);
    cases.push(from_data(
        "block_last_int4",
        x.clone(),
        &[6, 10],
        Scheme::new(4).per_block(1, 4),
    ));
    cases.push(from_data(
        "block_lead_uint4",
        x.clone(),
        &[6, 10],
        Scheme::asymmetric_unsigned(4).per_block(0, 4),
    ));
    cases.push(from_data(
        "block_last_int8",
        x.clone(),
        &[6, 10],
        Scheme::new(8).symmetric(false).per_block(1, 3),
    ));
    cases.push(from_data(
        "block_lead_int16",
        x,
        &[6, 10],
        Scheme::new(16).per_block(0, 5),
    ));
    let x = random(&mut rng, 3 * 8 * 5, 2.0, 1.0);
    cases.push(from_data(
        "block_mid_uint8",
        x.clone(),
        &[3, 8, 5],
        Scheme::asymmetric_unsigned(8).per_block(1, 3),
    ));
    cases.push(from_data(
        "block32_int4",
        random(&mut rng, 4 * 96, 1.0, 0.0),
        &[4, 96],
        Scheme::new(4).per_block(1, 32),
    ));

    // Odd lengths: packed storage pads the last byte.
    cases.push(from_data(
        "odd_int4",
        random(&mut rng, 7, 1.0, 0.0),
        &[7],
        Scheme::new(4),
    ));
    cases.push(from_data(
        "odd_uint2",
        random(&mut rng, 7, 1.0, 0.0),
        &[7],
        Scheme::asymmetric_unsigned(2),
    ));

    // Special values: onnxruntime defines them, the reference evaluator does not.
    let specials = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        0.0,
        -0.0,
        1.5,
        3e9,
        -3e9,
    ];
    for (name, scheme, zp, storage) in [
        ("int8", Scheme::new(8).symmetric(false), 9, Storage::I8),
        ("uint8", Scheme::asymmetric_unsigned(8), 77, Storage::U8),
        ("int16", Scheme::new(16).symmetric(false), 0, Storage::I16),
    ] {
        let mut c = fixed(
            &format!("special_{name}"),
            specials.clone(),
            scheme,
            0.03,
            zp,
            storage,
        );
        c.check = "onnxruntime";
        cases.push(c);
    }
    cases
}

/// ONNX's axis attribute for the case (QuantizeLinear defaults to 1, unused for per-tensor).
fn onnx_axis(g: Granularity) -> (usize, usize) {
    match g {
        Granularity::PerTensor => (1, 0),
        Granularity::PerAxis { axis } => (axis, 0),
        Granularity::PerBlock { axis, block } => (axis, block),
    }
}

fn write_case(dir: &Path, c: &Case) -> String {
    let q = QTensor::quantize_with(&c.x, &c.shape, c.params.clone(), c.storage).unwrap();
    let deq = q.dequantize().unwrap();
    // The one-pass fake-quant must equal dequantize(quantize(x)) bit for bit.
    let fq = fake_quant(&c.x, &c.shape, &c.params).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&fq),
        bits(&deq),
        "{}: fake-quant differs from dequantize(quantize)",
        c.name
    );

    let layout = Layout::new(&c.shape, c.params.granularity).unwrap();
    let pshape = layout.param_shape();
    // Raw little-endian arrays (x, scale, deq: float32; zp, q: int32; packed: uint8), their
    // shapes in the manifest line.
    let write = |part: &str, bytes: Vec<u8>| {
        fs::write(dir.join(format!("{}.{part}.bin", c.name)), bytes).unwrap()
    };
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i32s = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    write("x", f32s(&c.x));
    write("scale", f32s(&c.params.scale));
    write("zp", i32s(&c.params.zero_point));
    write("q", i32s(&q.codes_i32()));
    write("deq", f32s(&deq));
    let packed = match &q.codes {
        zeropoint_core::Codes::Packed(_, bytes) => {
            write("packed", bytes.clone());
            true
        }
        _ => false,
    };
    let (axis, block) = onnx_axis(c.params.granularity);
    format!(
        "{{\"name\":\"{}\",\"type\":\"{}\",\"axis\":{axis},\"block_size\":{block},\"packed\":{packed},\"check\":\"{}\",\"shape\":{:?},\"param_shape\":{:?}}}\n",
        c.name,
        c.storage.name(),
        c.check,
        c.shape,
        pshape
    )
}

#[test]
fn kernels_are_bit_exact_with_onnx_reference_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let manifest: String = cases.iter().map(|c| write_case(dir.path(), c)).collect();
    fs::write(dir.path().join("cases.jsonl"), manifest).unwrap();

    let out = run_python("onnx_reference.py", &[dir.path()]);
    print!("{out}");
    let summary = out.lines().last().unwrap_or_default();
    let reference = cases.iter().filter(|c| c.check != "onnxruntime").count();
    assert!(
        summary.starts_with(&format!("cases={} reference={reference} ", cases.len())),
        "not every case was checked against the reference: {summary}"
    );
    let ort: usize = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("onnxruntime="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let ort_only = cases.iter().filter(|c| c.check == "onnxruntime").count();
    assert!(
        ort >= ort_only + 20,
        "too few cases ran in onnxruntime: {summary}"
    );
    assert!(summary.ends_with("mismatches=0"), "{summary}");
}
