//! Range estimators: the same answer however the data is batched, merged or threaded; state that
//! does not grow with the data; and each criterion doing what it is for.

use zeropoint_core::observer::{self, search, Config, Method, Observer};
use zeropoint_core::{metrics, stats, QParams, Scheme};

/// Heavy-tailed activations [samples, channels, 8]: Laplace-like bulk, a few large outliers,
/// and a ReLU-like channel.
fn activations(samples: usize) -> (Vec<f32>, Vec<usize>) {
    let shape = vec![samples, 4, 8];
    let mut s = 0x9E37_79B9u32;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1 << 24) as f32
    };
    let x = (0..samples * 32)
        .map(|i| {
            let u = uniform().max(1e-7);
            let sign = if uniform() < 0.5 { -1.0 } else { 1.0 };
            let v = sign * -u.ln() * 0.3 + 0.1;
            match (i / 8) % 4 {
                0 => v.max(0.0),
                1 if i % 997 == 0 => v * 40.0,
                c => v * c as f32,
            }
        })
        .collect();
    (x, shape)
}

fn methods() -> Vec<Method> {
    vec![
        Method::MinMax,
        Method::Percentile {
            lower: 0.1,
            upper: 99.9,
        },
        Method::AbsPercentile { p: 99.5 },
        Method::Mse { norm: 2.0 },
        Method::Mse { norm: 2.4 },
        Method::Entropy {
            bins: 2048,
            quantized_bins: 128,
        },
    ]
}

fn observe(config: Config, x: &[f32], shape: &[usize], batch: usize) -> Observer {
    let per_sample: usize = shape[1..].iter().product();
    let mut obs = Observer::new(config).unwrap();
    for b in x.chunks(batch * per_sample) {
        let mut s = shape.to_vec();
        s[0] = b.len() / per_sample;
        obs.update(b, &s).unwrap();
    }
    obs
}

#[test]
fn ranges_do_not_depend_on_batching_merging_or_threads() {
    let (x, shape) = activations(400);
    let scheme = Scheme::new(4).symmetric(false);
    for method in methods() {
        for axis in [None, Some(1)] {
            let mut config = Config::new(method);
            config.axis = axis;
            let one = observe(config, &x, &shape, 400).ranges(&scheme).unwrap();
            let many = observe(config, &x, &shape, 4).ranges(&scheme).unwrap();
            assert_eq!(one, many, "{method} axis {axis:?}: 1 batch vs 100");
            // Four workers on interleaved slices, merged.
            let per_sample = 32;
            let mut merged = Observer::new(config).unwrap();
            for w in 0..4 {
                let part: Vec<f32> = x
                    .chunks(per_sample)
                    .skip(w)
                    .step_by(4)
                    .flatten()
                    .copied()
                    .collect();
                merged.merge(&observe(config, &part, &shape, 7)).unwrap();
            }
            assert_eq!(one, merged.ranges(&scheme).unwrap(), "{method} merged");
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let r = pool.install(|| observe(config, &x, &shape, 13).ranges(&scheme).unwrap());
                assert_eq!(one, r, "{method} with {threads} threads");
            }
        }
    }
}

#[test]
fn state_size_does_not_grow_with_samples() {
    let (x, shape) = activations(10_000);
    for method in methods().into_iter().chain([Method::CrossEntropy]) {
        for axis in [None, Some(1)] {
            if method == Method::CrossEntropy && axis.is_some() {
                continue;
            }
            let mut config = Config::new(method);
            config.axis = axis;
            config.rows = 16; // fewer than the 40 rows of 10 samples: the reservoir is full
            let small = observe(config, &x[..10 * 32], &[10, 4, 8], 10);
            let large = observe(config, &x, &shape, 100);
            assert_eq!(
                small.state_bytes(),
                large.state_bytes(),
                "{method} axis {axis:?}"
            );
        }
    }
}

#[test]
fn moving_average_follows_its_definition() {
    let mut obs = Observer::new(Config::new(Method::MovingAverage { momentum: 0.5 })).unwrap();
    obs.update(&[-1.0, 1.0], &[2]).unwrap();
    obs.update(&[-3.0, 5.0], &[2]).unwrap();
    assert_eq!(obs.ranges(&Scheme::new(8)).unwrap(), vec![(-2.0, 3.0)]);
    let other = obs.clone();
    assert!(obs.merge(&other).is_err());
}

/// Quantization MSE of `x` with per-tensor parameters from `range`.
fn mse(x: &[f32], scheme: &Scheme, range: (f32, f32)) -> f64 {
    let p = QParams::from_ranges(scheme, &[range]).unwrap();
    metrics::quantization_error(x, &[x.len()], &p)
        .unwrap()
        .0
        .mse
}

#[test]
fn mse_ranges_beat_min_max_at_4_bits_on_heavy_tails() {
    let (x, shape) = activations(2000);
    for scheme in [Scheme::new(4), Scheme::new(4).symmetric(false)] {
        let minmax = observe(Config::new(Method::MinMax), &x, &shape, 100)
            .ranges(&scheme)
            .unwrap()[0];
        let hist = observe(Config::new(Method::Mse { norm: 2.0 }), &x, &shape, 100)
            .ranges(&scheme)
            .unwrap()[0];
        let mse_config = Config::new(Method::Mse { norm: 2.0 });
        let exact = observer::estimate_values(&x, &[x.len()], &scheme, mse_config).unwrap()[0];
        let (a, b, c) = (
            mse(&x, &scheme, minmax),
            mse(&x, &scheme, hist),
            mse(&x, &scheme, exact),
        );
        assert!(
            b < 0.5 * a,
            "{scheme}: histogram MSE range {b} vs min-max {a}"
        );
        assert!(
            c <= b * 1.001,
            "{scheme}: exact search {c} vs histogram {b}"
        );
    }
}

#[test]
fn percentiles_match_exact_ones_within_a_bin() {
    let (x, shape) = activations(1000);
    let obs = observe(
        Config::new(Method::Percentile {
            lower: 0.5,
            upper: 99.5,
        }),
        &x,
        &shape,
        50,
    );
    let (lo, hi) = obs.ranges(&Scheme::new(8)).unwrap()[0];
    let exact = stats::percentiles(&x, &[0.5, 99.5]).unwrap();
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let bin = 4.0 * absmax / 4096.0;
    assert!((lo - exact[0]).abs() <= bin, "{lo} vs {}", exact[0]);
    assert!((hi - exact[1]).abs() <= bin, "{hi} vs {}", exact[1]);
}

#[test]
fn abs_percentiles_fold_the_histogram_exactly() {
    let (x, shape) = activations(1000);
    let config = Config::new(Method::AbsPercentile { p: 99.0 });
    let (lo, hi) = observe(config, &x, &shape, 50)
        .ranges(&Scheme::new(8))
        .unwrap()[0];
    let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let t = stats::percentiles(&abs, &[99.0]).unwrap()[0];
    let absmax = abs.iter().fold(0f32, |m, &v| m.max(v));
    let bin = 4.0 * absmax / 4096.0;
    let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
    assert!((hi - t).abs() <= bin, "{hi} vs {t}");
    assert_eq!(lo, (-hi).max(min));
    let exact = observer::estimate_values(&x, &[x.len()], &Scheme::new(8), config).unwrap()[0];
    assert!((exact.1 - t).abs() <= bin, "{exact:?} vs {t}");
}

#[test]
fn entropy_clips_a_long_tail() {
    let (x, shape) = activations(2000);
    let obs = observe(
        Config::new(Method::Entropy {
            bins: 2048,
            quantized_bins: 128,
        }),
        &x,
        &shape,
        100,
    );
    let (lo, hi) = obs.ranges(&Scheme::new(8)).unwrap()[0];
    let (min, max) = x
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo >= min && hi <= max && lo < hi);
    assert!(
        hi < 0.8 * max,
        "entropy kept the whole tail: [{lo}, {hi}] of [{min}, {max}]"
    );
}

#[test]
fn cross_entropy_keeps_the_argmax_information() {
    // Logits rows of 10 classes: one large winner per row, plus a rare huge outlier.
    let rows = 300;
    let mut x = Vec::new();
    for r in 0..rows {
        for c in 0..10 {
            let base = ((r * 7 + c * 3) % 11) as f32 * 0.2 - 1.0;
            x.push(if c == r % 10 { base + 6.0 } else { base });
        }
    }
    x[55] = 80.0;
    let scheme = Scheme::new(4).symmetric(false);
    let mut config = Config::new(Method::CrossEntropy);
    config.rows = 128;
    let mut obs = Observer::new(config).unwrap();
    for b in x.chunks(10 * 30) {
        obs.update(b, &[b.len() / 10, 10]).unwrap();
    }
    let (lo, hi) = obs.ranges(&scheme).unwrap()[0];
    let sample: Vec<Vec<f32>> = x.chunks(10).map(|r| r.to_vec()).collect();
    let ce = search::cross_entropy_cost(&scheme, &sample);
    let (min, max) = (x.iter().copied().fold(f32::MAX, f32::min), 80.0);
    assert!(
        ce(lo, hi) < ce(min, max),
        "{} vs min-max {}",
        ce(lo, hi),
        ce(min, max)
    );
    assert!(hi < max);
}

#[test]
fn bn_ranges_are_beta_plus_minus_a_gamma() {
    let r = observer::bn_ranges(&[1.0, -2.0], &[0.5, 0.0], 6.0).unwrap();
    assert_eq!(r, vec![(-5.5, 6.5), (-12.0, 12.0)]);
    assert_eq!(
        observer::bn_range(&[1.0, -2.0], &[0.5, 0.0], 6.0).unwrap(),
        (-12.0, 12.0)
    );
    assert!(observer::bn_ranges(&[1.0], &[], 6.0).is_err());
}

#[test]
fn bad_input_is_refused() {
    let mut obs = Observer::new(Config::new(Method::MinMax).per_axis(1)).unwrap();
    obs.update(&[1.0; 6], &[2, 3]).unwrap();
    assert!(
        obs.update(&[1.0; 8], &[2, 4]).is_err(),
        "channel count changed"
    );
    let before = obs.clone();
    let nan_in_last_channel = [1.0, 2.0, 0.0, 0.0, 0.0, f32::NAN];
    assert!(obs.update(&nan_in_last_channel, &[2, 3]).is_err());
    assert_eq!(obs, before, "a refused batch left a trace");
    assert!(obs.update(&[1.0; 5], &[2, 3]).is_err());
    assert!(Observer::new(Config::new(Method::Percentile {
        lower: 90.0,
        upper: 10.0
    }))
    .is_err());
    assert!(Observer::new(Config::new(Method::CrossEntropy).per_axis(0)).is_err());
    assert!(Observer::new(Config::new(Method::MinMax).bins(3)).is_err());
    assert!(Method::parse("median").is_err());
    let empty = Observer::new(Config::new(Method::Mse { norm: 2.0 })).unwrap();
    assert!(empty.ranges(&Scheme::new(8)).is_err());
}

#[test]
fn per_block_ranges_are_those_of_each_block_alone() {
    // [4 rows, 10 columns] in blocks of 4 along the columns: 3 blocks per row, the last ragged.
    let (x, _) = activations(5);
    let x = &x[..40];
    let shape = [4, 10];
    let scheme = Scheme::new(4).per_block(1, 4);
    for method in [
        Method::MinMax,
        Method::Mse { norm: 2.0 },
        Method::Percentile {
            lower: 10.0,
            upper: 90.0,
        },
    ] {
        let ranges = observer::estimate_values(x, &shape, &scheme, Config::new(method)).unwrap();
        assert_eq!(ranges.len(), 12, "{method}");
        for row in 0..4 {
            for b in 0..3 {
                let block = &x[row * 10 + 4 * b..row * 10 + (4 * b + 4).min(10)];
                let alone = observer::estimate_values(
                    block,
                    &[block.len()],
                    &Scheme::new(4),
                    Config::new(method),
                )
                .unwrap()[0];
                assert_eq!(ranges[row * 3 + b], alone, "{method} row {row} block {b}");
            }
        }
    }
    let e = observer::estimate_values(
        x,
        &shape,
        &scheme,
        Config::new(Method::MovingAverage { momentum: 0.9 }),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("per-block ranges are estimated by minmax, percentile, abs-percentile or mse"),
        "{e}"
    );
}

/// An MSE observer's histograms give the other histogram methods' ranges without a second pass
/// (what `zeropoint analyze` measures its suggestions with): exactly what an observer of that
/// method gives on the same data, and the exact extremes for min-max.
#[test]
fn one_histogram_answers_every_histogram_method() {
    let (x, shape) = activations(64);
    let scheme = Scheme::new(8).symmetric(false);
    let mse = observe(Config::new(Method::Mse { norm: 2.0 }), &x, &shape, 16);
    for method in methods() {
        if matches!(method, Method::MovingAverage { .. }) {
            continue;
        }
        let own = observe(Config::new(method), &x, &shape, 16);
        let answered = mse.ranges_with(&method, &scheme).expect("histograms");
        assert_eq!(answered.unwrap(), own.ranges(&scheme).unwrap(), "{method}");
    }
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    assert_eq!(
        mse.ranges_with(&Method::MinMax, &scheme).unwrap().unwrap(),
        vec![(lo, hi)]
    );
    // A min-max observer keeps no histogram to answer from.
    let minmax = observe(Config::new(Method::MinMax), &x, &shape, 16);
    assert!(minmax
        .ranges_with(&Method::Mse { norm: 2.0 }, &scheme)
        .is_none());
}
