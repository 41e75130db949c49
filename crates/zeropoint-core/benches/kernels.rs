//! Kernel throughput in GB/s of f32 input, next to a plain copy of the same buffer.
//!
//! Run through `scripts/bench-kernels`, which also measures numpy in the same run and prints the
//! ratios. Alone: `cargo bench -p zeropoint-core --bench kernels -- [--json] [--quick]`.
//! Each case is timed `REPS` times and the fastest run kept (the least disturbed by the machine).

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;
use zeropoint_core::ggml::{self, GgmlType};
use zeropoint_core::{
    dequantize, fake_quant_in_place, quantize, quantize_packed, Packing, QParams, Scheme,
};

struct Case {
    name: &'static str,
    bytes: usize,
    run: Box<dyn FnMut() + Send>,
}

fn data(n: usize) -> Vec<f32> {
    // A deterministic, roughly Gaussian signal (sum of 4 uniforms) with no special values.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (next() + next() + next() + next() - 2.0) * 1.7)
        .collect()
}

fn copy_case(name: &'static str, src: Vec<f32>) -> Case {
    let n = src.len();
    let mut dst = vec![0f32; n];
    Case {
        name,
        bytes: 4 * n,
        run: Box::new(move || {
            // One memcpy per thread: large copies let the C library use streaming stores.
            let part = n.div_ceil(rayon::current_num_threads());
            dst.par_chunks_mut(part)
                .zip(src.par_chunks(part))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&dst);
        }),
    }
}

fn cases(quick: bool) -> Vec<Case> {
    let n = if quick { 1 << 22 } else { 64 << 20 };
    let side = if quick { 1024 } else { 4096 };
    let x = data(n);
    let shape = [n];
    let p8 = QParams::from_data(&Scheme::new(8), &x, &shape).unwrap();
    let mut out: Vec<Case> = Vec::new();

    out.push(copy_case("copy f32", x.clone()));

    let (src, p, mut q) = (x.clone(), p8.clone(), vec![0i8; n]);
    out.push(Case {
        name: "quantize per-tensor int8",
        bytes: 4 * n,
        run: Box::new(move || {
            quantize(&src, &shape, &p, &mut q).unwrap();
            black_box(&q);
        }),
    });

    let mut codes = vec![0i8; n];
    quantize(&x, &shape, &p8, &mut codes).unwrap();
    let (p, mut y) = (p8.clone(), vec![0f32; n]);
    out.push(Case {
        name: "dequantize per-tensor int8",
        bytes: 4 * n,
        run: Box::new(move || {
            dequantize(&codes, &shape, &p, &mut y).unwrap();
            black_box(&y);
        }),
    });

    let (mut buf, p) = (x.clone(), p8.clone());
    out.push(Case {
        name: "fake-quant per-tensor int8 (in place)",
        bytes: 4 * n,
        run: Box::new(move || {
            fake_quant_in_place(&mut buf, &shape, &p).unwrap();
            black_box(&buf);
        }),
    });

    let m = data(side * side);
    // The matrix cases move a quarter of the flat cases' bytes; their "% of copy" is taken against
    // a copy of their own size, which a cache may hold where it cannot hold the larger one.
    out.push(copy_case("copy f32 (matrix)", m.clone()));
    let mshape = [side, side];
    let pc = QParams::from_data(&Scheme::new(8).per_axis(0), &m, &mshape).unwrap();
    let (src, mut q) = (m.clone(), vec![0i8; side * side]);
    out.push(Case {
        name: "quantize per-channel int8 (axis 0)",
        bytes: 4 * side * side,
        run: Box::new(move || {
            quantize(&src, &mshape, &pc, &mut q).unwrap();
            black_box(&q);
        }),
    });

    let pb = QParams::from_data(&Scheme::new(4).per_block(1, 32), &m, &mshape).unwrap();
    let (src, mut q) = (m, vec![0u8; side * side / 2]);
    out.push(Case {
        name: "quantize per-block-32 int4 (packed)",
        bytes: 4 * side * side,
        run: Box::new(move || {
            quantize_packed(&src, &mshape, &pb, Packing::Int4, &mut q).unwrap();
            black_box(&q);
        }),
    });
    // llama.cpp's block formats, rows of 4096 as in a 7B model's weights (ggml's reference
    // quantizers, which llama-quantize runs and zeropoint reproduces byte for byte).
    for (name, ty) in [
        ("ggml Q8_0 (rows of 4096)", GgmlType::Q8_0),
        ("ggml Q4_0 (rows of 4096)", GgmlType::Q4_0),
        ("ggml Q2_K (rows of 4096)", GgmlType::Q2_K),
        ("ggml Q3_K (rows of 4096)", GgmlType::Q3_K),
        ("ggml Q4_K (rows of 4096)", GgmlType::Q4_K),
        ("ggml Q5_K (rows of 4096)", GgmlType::Q5_K),
        ("ggml Q6_K (rows of 4096)", GgmlType::Q6_K),
    ] {
        let src = x[..side * side].to_vec();
        let mut q = vec![0u8; ty.row_size(side * side).unwrap()];
        out.push(Case {
            name,
            bytes: 4 * side * side,
            run: Box::new(move || {
                ggml::quantize_rows_into(ty, &src, 4096, &mut q).unwrap();
                black_box(&q);
            }),
        });
    }
    out
}

fn best_seconds(run: &mut (dyn FnMut() + Send), reps: usize) -> f64 {
    run(); // warm: page faults, caches
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 7 };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cases = cases(quick);
    for threads in [1, cores] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for case in &mut cases {
            let secs = pool.install(|| best_seconds(&mut case.run, reps));
            let gbps = case.bytes as f64 / secs / 1e9;
            if json {
                println!(
                    "{{\"name\":\"{}\",\"threads\":{threads},\"bytes\":{},\"gbps\":{gbps:.4},\"seconds\":{secs:.6}}}",
                    case.name, case.bytes
                );
            } else {
                println!("{:<40} threads {threads}: {gbps:7.2} GB/s", case.name);
            }
        }
    }
}
