//! x·Wᵀ with W stored [out, in], as ONNX stores a linear layer's weight (Gemm with transB=1,
//! the W and R of LSTM, GRU and RNN): every output is the dot product of two contiguous rows.
//!
//! candle's product takes such a W as a transposed operand: its GEMM then gathers W's columns,
//! strided, into panels on every call, and the recurrent ops made W and R contiguous first, a
//! transposed copy of every weight on every run. A CRNN text recogniser (ddddocr-ocr: a
//! bidirectional LSTM of 512 and a 1024 → 8210 classifier) took 52 ms a run with them at one
//! thread, 28 without (ONNX Runtime 23-25). Here W is read in place, row by row.
//!
//! Each output is one dot product summed in a fixed order (16 lanes along k, then a fixed
//! tree), whichever tile, thread or instruction set computes it: the same bits for any thread
//! count, on AVX-512 and AVX2, and from the portable kernel other CPUs run (an x86 CPU without
//! AVX2 takes candle's product instead: see [`matmul_bt`]).

use candle_core::{DType as CDType, Tensor};
use rayon::prelude::*;

use super::{c, R};

/// Lanes of the partial sums along k: fixed, so that the arithmetic is the same on every path.
const L: usize = 16;

/// Columns of the output a task computes: 64 rows of `b`, so that a 2048-wide recurrent step
/// splits in 32 tasks and each task's rows of `b` stay in its core's cache across all of `a`.
const COLUMNS_PER_TASK: usize = 64;

/// From this many rows of `a` on, candle's blocked product (the gemm crate's, as for
/// convolutions) is faster than these kernels, which sum each output's 16 lanes apart: on the
/// 2-core AVX-512 VM, [1024, 768]·[3072, 768]ᵀ took 12.6 against 38.7 ms, [1024, 64]·[128, 64]ᵀ
/// 0.11 against 0.64 ms, and caustic-nmr's edge filters ([136222, 39]·[128, 39]ᵀ) 0.09 against
/// 0.63 s; at 256 rows the two are even, and below these kernels win (16 rows of 768 by 3072:
/// 0.64 against 1.40 ms), as for a recurrent step or a batch-1 classifier.
const BLOCKED_ROWS: usize = 256;

/// Below this many multiply-adds the product runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// `a` [M, K] times the transpose of `b` [N, K]: [M, N], for float32 tensors that carry no
/// gradient and fewer than [`BLOCKED_ROWS`] rows of `a`; anything else goes to candle's product
/// of `a` and `bᵀ` (a view, not a copy).
pub(crate) fn matmul_bt(a: &Tensor, b: &Tensor) -> R<Tensor> {
    let plain = a.dtype() == CDType::F32 && b.dtype() == CDType::F32;
    // An x86 CPU without AVX2 has no FMA instruction: the portable kernel's `mul_add` is a
    // libm call there (0.6 GFLOP/s), so candle's product does the work.
    let slow = cfg!(target_arch = "x86_64") && Tiles::here().mr == 1;
    let tall = a.dims().first().is_some_and(|&m| m >= BLOCKED_ROWS);
    if tall || !plain || slow || a.track_op() || b.track_op() || a.rank() != 2 || b.rank() != 2 {
        return c(a.matmul(&b.t()?));
    }
    let ((m, k), (n, kb)) = (c(a.dims2())?, c(b.dims2())?);
    if k != kb {
        return Err(format!("matrix product: [{m}, {k}] by the transpose of [{n}, {kb}]").into());
    }
    let y = c(crate::value::with_f32_slices([a, b], |[a, b]| {
        rows_dot(a, b, (m, n, k))
    }))?;
    c(Tensor::from_vec(y, (m, n), a.device()))
}

/// a [m, k] · b [n, k]ᵀ, row-major: [m, n].
pub(crate) fn rows_dot(a: &[f32], b: &[f32], dims: (usize, usize, usize)) -> Vec<f32> {
    rows_dot_with(Tiles::here(), a, b, dims)
}

/// [`rows_dot`] with the kernels `t`.
fn rows_dot_with(
    tiles: &Tiles,
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    assert!(a.len() >= m * k && b.len() >= n * k);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let tasks = n.div_ceil(COLUMNS_PER_TASK);
    let columns = |task: usize| -> Vec<f32> {
        let lo = task * COLUMNS_PER_TASK;
        let hi = (lo + COLUMNS_PER_TASK).min(n);
        let mut out = vec![0f32; m * (hi - lo)];
        block(tiles, a, &b[lo * k..hi * k], (m, hi - lo, k), &mut out);
        out
    };
    let parts: Vec<Vec<f32>> = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_WORK {
        (0..tasks).into_par_iter().map(columns).collect()
    } else {
        (0..tasks).map(columns).collect()
    };
    let mut y = vec![0f32; m * n];
    for (task, part) in parts.iter().enumerate() {
        let (lo, width) = (task * COLUMNS_PER_TASK, part.len() / m);
        for (row, src) in part.chunks_exact(width).enumerate() {
            y[row * n + lo..row * n + lo + width].copy_from_slice(src);
        }
    }
    y
}

/// out [m, n] = a [m, k] · b [n, k]ᵀ, in tiles of the widest kernels this CPU has; the edges
/// in tiles of one row or one column, which sum each output the same way.
fn block(t: &Tiles, a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), out: &mut [f32]) {
    let mut j = 0;
    while j < n {
        let cols = if n - j >= t.nr { t.nr } else { 1 };
        let mut i = 0;
        while i < m {
            let rows = if m - i >= t.mr { t.mr } else { 1 };
            let tile = match (rows == t.mr && rows > 1, cols == t.nr && cols > 1) {
                (true, true) => t.full,
                (true, false) => t.rows,
                (false, true) => t.cols,
                (false, false) => t.one,
            };
            let at = Operands {
                a: &a[i * k..(i + rows) * k],
                b: &b[j * k..(j + cols) * k],
                k,
            };
            let mut y = [0f32; MAX_TILE];
            // SAFETY: `t` comes from `Tiles::every_one_here`, which lists only kernels this CPU
            // runs; `at` holds `rows` rows of `a` and `cols` of `b`, the shape of `tile`.
            unsafe { tile(&at, &mut y) };
            for r in 0..rows {
                out[(i + r) * n + j..(i + r) * n + j + cols]
                    .copy_from_slice(&y[r * cols..(r + 1) * cols]);
            }
            i += rows;
        }
        j += cols;
    }
}

/// The most outputs a tile computes.
const MAX_TILE: usize = 16;

/// One tile's rows of `a` and of `b`, each `k` long, back to back.
struct Operands<'a> {
    a: &'a [f32],
    b: &'a [f32],
    k: usize,
}

/// A kernel computing the products of all rows of `a` with all rows of `b` of its operands,
/// row-major into the output.
type Tile = unsafe fn(&Operands, &mut [f32; MAX_TILE]);

/// The kernels of one instruction set: `full` takes `mr` rows of `a` and `nr` of `b`, `rows`
/// takes `mr` and 1, `cols` 1 and `nr`, `one` 1 and 1.
struct Tiles {
    mr: usize,
    nr: usize,
    full: Tile,
    rows: Tile,
    cols: Tile,
    one: Tile,
}

impl Tiles {
    /// The widest kernels this CPU runs, found once: a recurrent op asks on every time step.
    fn here() -> &'static Tiles {
        static HERE: std::sync::OnceLock<Tiles> = std::sync::OnceLock::new();
        HERE.get_or_init(|| Tiles::every_one_here().swap_remove(0))
    }

    /// Every kernel set this CPU runs, widest first, the portable one last.
    fn every_one_here() -> Vec<Tiles> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Tiles {
                    mr: 4,
                    nr: 4,
                    full: avx512::tile::<4, 4>,
                    rows: avx512::tile::<4, 1>,
                    cols: avx512::tile::<1, 4>,
                    one: avx512::tile::<1, 1>,
                });
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                all.push(Tiles {
                    mr: 2,
                    nr: 3,
                    full: avx2::tile::<2, 3>,
                    rows: avx2::tile::<2, 1>,
                    cols: avx2::tile::<1, 3>,
                    one: avx2::tile::<1, 1>,
                });
            }
        }
        all.push(Tiles {
            mr: 1,
            nr: 1,
            full: portable,
            rows: portable,
            cols: portable,
            one: portable,
        });
        all
    }
}

/// Row `r` of `x`'s rows of `k`: its whole 16-lane chunks and its last k % 16 values, padded
/// with zeros (which add nothing) to 16.
fn tail(x: &[f32], r: usize, k: usize) -> [f32; L] {
    let whole = k / L * L;
    let mut v = [0f32; L];
    v[..k - whole].copy_from_slice(&x[r * k + whole..(r + 1) * k]);
    v
}

/// Any number of rows, one output at a time, in the lanes and order of the vector kernels.
///
/// # Safety
/// None needed; `unsafe` for the `Tile` signature.
unsafe fn portable(at: &Operands, y: &mut [f32; MAX_TILE]) {
    let k = at.k;
    let (rows, cols) = (at.a.len() / k.max(1), at.b.len() / k.max(1));
    let whole = k / L * L;
    for r in 0..rows {
        for cb in 0..cols {
            let (a, b) = (&at.a[r * k..(r + 1) * k], &at.b[cb * k..(cb + 1) * k]);
            let mut acc = [0f32; L];
            for (ca, cb) in a[..whole].chunks_exact(L).zip(b[..whole].chunks_exact(L)) {
                for l in 0..L {
                    acc[l] = ca[l].mul_add(cb[l], acc[l]);
                }
            }
            if whole < k {
                let (ta, tb) = (tail(at.a, r, k), tail(at.b, cb, k));
                for l in 0..L {
                    acc[l] = ta[l].mul_add(tb[l], acc[l]);
                }
            }
            // The same tree as the vector kernels: lanes l and l + 8, then l + 4, l + 2, l + 1.
            let mut half = L / 2;
            while half > 0 {
                for l in 0..half {
                    acc[l] += acc[l + half];
                }
                half /= 2;
            }
            y[r * cols + cb] = acc[0];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{tail, Operands, L, MAX_TILE};

    /// Adds the products of the last k % 16 values of a tile's R rows of `a` and C of `b` to
    /// its sums. Apart from the tiles: inlined, this code made LLVM keep half of the sums on
    /// the stack throughout their loops (7.1 against 4.3 ms on a 25 × 1024 → 8210
    /// classifier).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `at` holds R rows of `a` and C of `b`.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn tail_add<const R: usize, const C: usize>(at: &Operands, sums: &mut [[__m512; C]; R]) {
        let k = at.k;
        for (r, sums) in sums.iter_mut().enumerate() {
            let va = _mm512_loadu_ps(tail(at.a, r, k).as_ptr());
            for (cb, sum) in sums.iter_mut().enumerate() {
                let vb = _mm512_loadu_ps(tail(at.b, cb, k).as_ptr());
                *sum = _mm512_fmadd_ps(va, vb, *sum);
            }
        }
    }

    /// R rows of `a` by C rows of `b`, 16 lanes in one register per output: 4 × 4 sums and
    /// their 8 operands fit AVX-512's 32 registers. (The same tile written out sum by sum ran
    /// slower: 6.6 against 4.6 ms on a 25 × 1024 → 8210 classifier.)
    ///
    /// # Safety
    /// The CPU has AVX-512F; `at` holds R rows of `a` and C of `b`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // indices name the register tile's rows and columns
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        at: &Operands,
        y: &mut [f32; MAX_TILE],
    ) {
        let k = at.k;
        assert!(at.a.len() >= R * k && at.b.len() >= C * k && R * C <= MAX_TILE);
        let (pa, pb) = (at.a.as_ptr(), at.b.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let whole = k / L * L;
        let mut p = 0;
        while p < whole {
            // In bounds: p + 16 ≤ k in every row.
            let va: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(pa.add(r * k + p)));
            for cb in 0..C {
                let vb = _mm512_loadu_ps(pb.add(cb * k + p));
                for r in 0..R {
                    acc[r][cb] = _mm512_fmadd_ps(va[r], vb, acc[r][cb]);
                }
            }
            p += L;
        }
        if whole < k {
            tail_add(at, &mut acc);
        }
        for r in 0..R {
            for cb in 0..C {
                y[r * C + cb] = sum16(acc[r][cb]);
            }
        }
    }

    /// The 16 lanes' total: lanes l and l + 8 first, then as the other kernels.
    #[inline(always)]
    unsafe fn sum16(v: __m512) -> f32 {
        let half = _mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        );
        super::avx2::sum8(half)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{tail, Operands, L, MAX_TILE};

    /// R rows of `a` by C rows of `b`, 16 lanes in two registers per output: 2 × 3 sums (12
    /// registers) and their operands fit AVX2's 16.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `at` holds R rows of `a` and C of `b`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // indices name the register tile's rows and columns
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        at: &Operands,
        y: &mut [f32; MAX_TILE],
    ) {
        let k = at.k;
        assert!(at.a.len() >= R * k && at.b.len() >= C * k && R * C <= MAX_TILE);
        let (pa, pb) = (at.a.as_ptr(), at.b.as_ptr());
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let whole = k / L * L;
        let mut p = 0;
        while p < whole {
            // In bounds: p + 16 ≤ k in every row.
            for cb in 0..C {
                let b = pb.add(cb * k + p);
                let vb = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
                for r in 0..R {
                    for h in 0..2 {
                        let va = _mm256_loadu_ps(pa.add(r * k + p + 8 * h));
                        acc[r][cb][h] = _mm256_fmadd_ps(va, vb[h], acc[r][cb][h]);
                    }
                }
            }
            p += L;
        }
        if whole < k {
            tail_add(at, &mut acc);
        }
        for r in 0..R {
            for cb in 0..C {
                let [lo, hi] = acc[r][cb];
                y[r * C + cb] = sum8(_mm256_add_ps(lo, hi));
            }
        }
    }

    /// The AVX2 form of the AVX-512 `tail_add`, apart from the tiles for the same reason.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `at` holds R rows of `a` and C of `b`.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn tail_add<const R: usize, const C: usize>(
        at: &Operands,
        sums: &mut [[[__m256; 2]; C]; R],
    ) {
        let k = at.k;
        for (r, sums) in sums.iter_mut().enumerate() {
            let va = tail(at.a, r, k);
            for (cb, sum) in sums.iter_mut().enumerate() {
                let vb = tail(at.b, cb, k);
                for (h, sum) in sum.iter_mut().enumerate() {
                    let (x, w) = (va.as_ptr().add(8 * h), vb.as_ptr().add(8 * h));
                    *sum = _mm256_fmadd_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(w), *sum);
                }
            }
        }
    }

    /// v[0] + .. + v[7] by the tree of the other kernels: lanes l and l + 4, then l + 2, l + 1.
    #[inline(always)]
    pub(super) unsafe fn sum8(v: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps::<1>(d, d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::values;

    /// Every kernel set this CPU has gives a [m, k]·[n, k]ᵀ within float rounding of the f64
    /// product, on shapes that leave edge rows, edge columns and a k % 16 tail, and all of
    /// them the same bits.
    #[test]
    fn every_kernel_set_gives_the_product_and_the_same_bits() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 2048, 512),
            (25, 67, 1024),
            (5, 9, 33),
            (7, 130, 17),
            (4, 4, 16),
            (9, 5, 100),
            (3, 3, 0),
        ] {
            let (a, b) = (values(m * k, 1), values(n * k, 2));
            let sets = Tiles::every_one_here();
            let first = rows_dot_with(&sets[0], &a, &b, (m, n, k));
            assert_eq!(first.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| f64::from(a[i * k + p]) * f64::from(b[j * k + p]))
                        .sum();
                    let scale: f64 = (0..k)
                        .map(|p| (f64::from(a[i * k + p]) * f64::from(b[j * k + p])).abs())
                        .sum();
                    let got = f64::from(first[i * n + j]);
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + scale),
                        "[{m}, {k}]·[{n}, {k}]ᵀ at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
            for t in &sets[1..] {
                let other = rows_dot_with(t, &a, &b, (m, n, k));
                assert!(
                    first
                        .iter()
                        .zip(&other)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "[{m}, {k}]·[{n}, {k}]ᵀ: kernels {}x{} and {}x{} differ",
                    sets[0].mr,
                    sets[0].nr,
                    t.mr,
                    t.nr
                );
            }
        }
    }

    /// The columns are cut in tasks by the shapes alone: one thread or three give the same bits.
    #[test]
    fn the_thread_count_does_not_change_the_bits() {
        let (m, n, k) = (6, 300, 777);
        let (a, b) = (values(m * k, 3), values(n * k, 4));
        let on = |threads| crate::ops::on_threads(threads, || rows_dot(&a, &b, (m, n, k)));
        assert_eq!(on(1), on(3));
    }

    /// From BLOCKED_ROWS rows on, candle's blocked product: within float rounding of the f64
    /// product, and the same bits on one thread or three.
    #[test]
    fn a_tall_product_is_candles_and_keeps_its_bits() {
        let (m, n, k) = (BLOCKED_ROWS + 44, 128, 39);
        let dev = candle_core::Device::Cpu;
        let (av, bv) = (values(m * k, 7), values(n * k, 8));
        let a = Tensor::from_vec(av.clone(), (m, k), &dev).unwrap();
        let b = Tensor::from_vec(bv.clone(), (n, k), &dev).unwrap();
        let on = |threads| {
            let y = crate::ops::on_threads(threads, || matmul_bt(&a, &b)).unwrap();
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let y = on(1);
        assert_eq!(y, on(3));
        for (i, j) in [(0, 0), (m - 1, n - 1), (BLOCKED_ROWS, 5), (17, 100)] {
            let terms = (0..k).map(|p| f64::from(av[i * k + p]) * f64::from(bv[j * k + p]));
            let (want, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
            let got = f64::from(y[i * n + j]);
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + scale),
                "({i}, {j}): {got} vs {want}"
            );
        }
    }

    /// Gradients and other types go to candle's product: the same values.
    #[test]
    fn tensors_outside_the_kernel_take_candles_product() {
        let dev = candle_core::Device::Cpu;
        let a = Tensor::from_vec(values(3 * 20, 5), (3, 20), &dev).unwrap();
        let b = Tensor::from_vec(values(7 * 20, 6), (7, 20), &dev).unwrap();
        let fast = matmul_bt(&a, &b).unwrap();
        let var = candle_core::Var::from_tensor(&a).unwrap();
        let tracked = matmul_bt(var.as_tensor(), &b).unwrap();
        assert!(tracked.track_op());
        let (x, y) = (
            fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tracked.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-5));
        assert!(matmul_bt(&a, &a.t().unwrap()).is_err());
    }

    /// A view of no elements whose offset lies past its empty storage (the LSTM state of a
    /// batch of no sequences, narrowed) multiplies to an empty product: it panicked slicing the
    /// storage (fuzz/findings/graph_mutations-crash-26567250).
    #[test]
    fn an_empty_view_past_its_storage_is_an_empty_product() {
        let dev = candle_core::Device::Cpu;
        let none = Tensor::zeros((0, 8), candle_core::DType::F32, &dev).unwrap();
        let h = none.narrow(1, 5, 0).unwrap().reshape((0, 0)).unwrap();
        let r = Tensor::zeros((0, 0), candle_core::DType::F32, &dev).unwrap();
        let narrowed = Tensor::zeros((2, 8), candle_core::DType::F32, &dev).unwrap();
        let x = narrowed.narrow(0, 2, 0).unwrap().narrow(1, 5, 3).unwrap();
        for (a, b, dims) in [(&h, &r, (0, 0)), (&x, &x, (0, 0))] {
            let y = matmul_bt(a, b).unwrap();
            assert_eq!(y.dims2().unwrap(), dims);
        }
    }
}
