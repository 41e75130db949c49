use super::*;

/// Deterministic pseudo-normal values (sum of uniforms), with an outlier now and then as real
/// weights have.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32) / (1u64 << 31) as f32
    };
    (0..n)
        .map(|i| {
            let v = (0..4).map(|_| next()).sum::<f32>() - 2.0;
            if i % 97 == 0 {
                v * 0.15
            } else {
                v * 0.02
            }
        })
        .collect()
}

fn sqnr_db(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
    let e: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    10.0 * (s / e).log10()
}

/// Each format with the SQNR it must beat on `weights` (measured 42.8, 32.8, 27.4, 24.7, 27.5,
/// 21.1, 18.3, 21.7, 15.2, 9.2 dB).
const QUANTIZED: [(GgmlType, f64); 10] = [
    (GgmlType::Q8_0, 40.0),
    (GgmlType::Q6_K, 30.0),
    (GgmlType::Q5_1, 25.0),
    (GgmlType::Q5_0, 23.0),
    (GgmlType::Q5_K, 25.0),
    (GgmlType::Q4_1, 19.0),
    (GgmlType::Q4_0, 16.5),
    (GgmlType::Q4_K, 19.5),
    (GgmlType::Q3_K, 13.0),
    (GgmlType::Q2_K, 7.5),
];

#[test]
fn every_format_round_trips_with_the_error_its_bits_allow() {
    let n = 512;
    let x = weights(4 * n, 7);
    for (ty, min_db) in QUANTIZED {
        let bytes = quantize_rows(ty, &x, n).unwrap();
        assert_eq!(bytes.len(), 4 * ty.row_size(n).unwrap(), "{ty}");
        let back = dequantize_rows(ty, &bytes, n).unwrap();
        let db = sqnr_db(&x, &back);
        assert!(db > min_db, "{ty}: {db:.1} dB");
    }
}

#[test]
fn more_bits_mean_less_error() {
    let n = 1024;
    let x = weights(8 * n, 3);
    let db = |ty| {
        sqnr_db(
            &x,
            &dequantize_rows(ty, &quantize_rows(ty, &x, n).unwrap(), n).unwrap(),
        )
    };
    use GgmlType::*;
    for pair in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0].windows(2) {
        let (a, b) = (db(pair[0]), db(pair[1]));
        assert!(a < b, "{} {a:.1} dB vs {} {b:.1} dB", pair[0], pair[1]);
    }
    assert!(db(Q4_0) < db(Q5_0) && db(Q4_1) < db(Q5_1));
}

#[test]
fn q8_0_matches_a_hand_computed_block() {
    let mut x = [0f32; 32];
    x[0] = 1.27;
    x[1] = -0.5;
    x[2] = 0.015; // 1.5 steps of 0.01: rounds half away from zero, to 2
    let b = quantize_rows(GgmlType::Q8_0, &x, 32).unwrap();
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), fp16(0.01));
    assert_eq!(&b[2..5], &[127u8, (-50i8) as u8, 2]);
    assert!(b[5..].iter().all(|&q| q == 0));
}

#[test]
fn q4_0_puts_the_largest_magnitude_on_code_zero() {
    let mut x = [0.1f32; 32];
    x[17] = -0.8;
    let b = quantize_rows(GgmlType::Q4_0, &x, 32).unwrap();
    assert_eq!(
        fp16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        fp16_to_f32(fp16(0.1))
    );
    assert_eq!(b[2 + 1] >> 4, 0, "element 17 is the high nibble of byte 1");
    let back = dequantize_rows(GgmlType::Q4_0, &b, 32).unwrap();
    assert!((back[17] + 0.8).abs() < 1e-3);
}

#[test]
fn zero_rows_give_zero_blocks_that_read_back_as_zero() {
    let x = vec![0f32; 512];
    for (ty, _) in QUANTIZED {
        let b = quantize_rows(ty, &x, 256).unwrap();
        let back = dequantize_rows(ty, &b, 256).unwrap();
        assert!(back.iter().all(|&v| v == 0.0), "{ty}");
    }
}

#[test]
fn float_types_convert_as_ggml_does() {
    let x = [1.0f32, -2.5, 65504.0, 1e-8, 0.1];
    let f16 = dequantize_rows(
        GgmlType::F16,
        &quantize_rows(GgmlType::F16, &x, 5).unwrap(),
        5,
    )
    .unwrap();
    assert_eq!(f16[..3], x[..3]);
    assert_eq!(bf16(1.0), 0x3f80);
    assert_eq!(bf16(f32::from_bits(0x3f80_8000)), 0x3f80, "ties go to even");
    assert_eq!(bf16(f32::from_bits(0x3f81_8000)), 0x3f82, "ties go to even");
    let f32s = quantize_rows(GgmlType::F32, &x, 5).unwrap();
    assert_eq!(dequantize_rows(GgmlType::F32, &f32s, 5).unwrap(), x);
}

#[test]
fn bad_rows_are_refused_with_the_reason() {
    let x = vec![0.5f32; 96];
    let e = quantize_rows(GgmlType::Q4_K, &x, 96).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a row of 96 elements is not a whole number of Q4_K blocks of 256"
    );
    let mut y = vec![0.5f32; 64];
    y[40] = f32::NAN;
    let e = quantize_rows(GgmlType::Q8_0, &y, 32).unwrap_err();
    assert_eq!(
        e.to_string(),
        "element 40 is NaN: ggml's quantizers need finite values"
    );
    let e = quantize_rows(GgmlType::IQ2_XXS, &x, 256).unwrap_err();
    assert_eq!(e.to_string(), "zeropoint cannot write ggml type IQ2_XXS");
    assert!(dequantize_rows(GgmlType::Q8_0, &[0u8; 35], 32).is_err());
}

#[test]
fn bytes_do_not_depend_on_the_thread_count() {
    let x = weights(64 * 256, 11);
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| quantize_rows(GgmlType::Q4_K, &x, 256).unwrap())
    };
    assert_eq!(run(1), run(4));
}

#[test]
fn the_type_table_matches_ggml() {
    for (ty, id, name, block, bytes) in TYPES {
        assert_eq!(GgmlType::from_id(id), Some(ty));
        assert_eq!(GgmlType::from_name(&name.to_lowercase()), Some(ty));
        assert_eq!((ty.block_size(), ty.type_size()), (block, bytes));
    }
    assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
    assert_eq!(GgmlType::Q6_K.row_size(4096), Some(16 * 210));
    assert_eq!(GgmlType::Q6_K.row_size(4000), None);
}
