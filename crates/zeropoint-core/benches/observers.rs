//! Observer update throughput (GB/s of f32 input, one core) on the data written by
//! scripts/bench_observers.py, which measures ONNX Runtime's calibrators on the same arrays.
//! Run through `scripts/bench-observers`. Usage: observers DATA.f32 BATCH_ELEMENTS

use std::time::Instant;

use zeropoint_core::observer::{Config, Method, Observer};
use zeropoint_core::Scheme;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.iter().skip(1).find(|a| !a.starts_with("--")) else {
        eprintln!("usage: observers DATA.f32 BATCH_ELEMENTS (run scripts/bench-observers)");
        return;
    };
    let batch: usize = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or(1 << 20);
    let bytes = std::fs::read(path).expect("cannot read the benchmark data");
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let methods = [
        ("minmax", Method::MinMax),
        (
            "histogram (percentile)",
            Method::Percentile {
                lower: 0.01,
                upper: 99.99,
            },
        ),
        ("histogram (mse)", Method::Mse { norm: 2.0 }),
        (
            "histogram (entropy)",
            Method::Entropy {
                bins: 2048,
                quantized_bins: 128,
            },
        ),
    ];
    let scheme = Scheme::new(8).symmetric(false);
    for (name, method) in methods {
        pool.install(|| {
            let mut best = f64::INFINITY;
            let mut finish = f64::INFINITY;
            for _ in 0..3 {
                let mut obs = Observer::new(Config::new(method)).unwrap();
                let t = Instant::now();
                for b in x.chunks(batch) {
                    obs.update(b, &[b.len()]).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                std::hint::black_box(obs.ranges(&scheme).unwrap());
                finish = finish.min(t.elapsed().as_secs_f64());
            }
            let gbps = 4.0 * x.len() as f64 / best / 1e9;
            println!(
                "{{\"name\":\"{name}\",\"gbps\":{gbps:.4},\"update_s\":{best:.6},\"finish_s\":{finish:.6}}}"
            );
        });
    }
}
