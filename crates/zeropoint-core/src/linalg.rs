//! Dense linear algebra GPTQ needs, in f64: the Cholesky factor of the inverse of a symmetric
//! positive definite matrix, one layer's inputs wide (K up to a few thousand: a 0.5B decoder's
//! FFN input is 4864). Both O(K³) steps go in blocks of [`NB`] rows through the gemm crate:
//! plain loops re-read the whole triangle from memory for every column (24.5 s for K = 4864
//! against 2.0 s blocked). Each gemm call runs on one thread over a fixed block, and the
//! blocks run in parallel, so the result does not depend on the thread count.

use rayon::prelude::*;

/// Rows per block.
const NB: usize = 64;

/// U, upper triangular with a positive diagonal, such that H⁻¹ = UᵀU, as f32 `[K, K]`.
///
/// With P the reversal of the index order and PHP = LLᵀ (Cholesky), H = RRᵀ with R = PLP upper
/// triangular, so H⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹ = P L⁻¹ P: one factorization and one triangular
/// inverse instead of inverting H and factorizing again.
pub fn inverse_cholesky_upper(h: Vec<f64>, k: usize) -> Result<Vec<f32>, String> {
    // Reversing the elements reverses the order of rows and of columns: PHP, in place.
    let mut l = h;
    l.reverse();
    cholesky_in_place(&mut l, k)?;
    let inv = lower_inverse(&l, k);
    drop(l);
    Ok((0..k * k).map(|i| inv[k * k - 1 - i] as f32).collect())
}

/// Σ aᵢbᵢ in four interleaved partial sums: the dependency chain of one running sum made these
/// loops latency-bound (a fixed order all the same, so results do not vary between runs).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a4.zip(b4) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// A matrix operand: its elements, the stride between its rows and between its columns.
pub type Operand<'a, T> = (&'a [T], usize, usize);

/// c (m × n, rows `ldc` apart) = alpha·c + beta·a·b, a being m × d and b d × n, on this thread
/// (c is read only where alpha is not zero). f32 or f64.
pub fn gemm<T: Copy + Default + PartialEq + 'static>(
    (m, n, d): (usize, usize, usize),
    (c, ldc): (&mut [T], usize),
    alpha: T,
    (a, b): (Operand<T>, Operand<T>),
    beta: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    let reach = |(x, rs, cs): Operand<T>, rows: usize, cols: usize| {
        cols == 0 || rows == 0 || (rows - 1) * rs + (cols - 1) * cs < x.len()
    };
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len());
    assert!(reach(a, m, d) && reach(b, d, n));
    // SAFETY: the asserts keep every element the strides reach inside its slice, and `c` is
    // borrowed mutably, so nothing else reads or writes it meanwhile.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            alpha != T::default(),
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Overwrites the lower triangle of the symmetric positive definite `[K, K]` matrix `a` with
/// its Cholesky factor L (A = LLᵀ). Only the lower triangle is read, and the upper one is left
/// undefined (the block products overwrite the diagonal blocks' upper parts). Left-looking by
/// column blocks: a block's columns take the product of the finished columns before them
/// (gemm), then its diagonal block is factored and the rows below solved against it.
fn cholesky_in_place(a: &mut [f64], k: usize) -> Result<(), String> {
    for j0 in (0..k).step_by(NB) {
        let j1 = (j0 + NB).min(k);
        let w = j1 - j0;
        // The finished columns of the block's own rows: L[j0..j1, 0..j0].
        let top: Vec<f64> = (j0..j1)
            .flat_map(|r| a[r * k..r * k + j0].iter().copied())
            .collect();
        // A[j0.., j0..j1] −= L[j0.., 0..j0] · L[j0..j1, 0..j0]ᵀ, rows in blocks.
        a[j0 * k..].par_chunks_mut(NB * k).for_each(|rows| {
            let m = rows.len() / k;
            let left: Vec<f64> = (0..m)
                .flat_map(|r| rows[r * k..r * k + j0].iter().copied())
                .collect();
            let out = (&mut rows[j0..], k);
            gemm((m, w, j0), out, 1.0, ((&left, j0, 1), (&top, 1, j0)), -1.0);
        });
        factor_diagonal_block(a, k, j0, j1)?;
        let diag: Vec<f64> = (j0..j1)
            .flat_map(|r| a[r * k + j0..r * k + j1].iter().copied())
            .collect();
        // The rows below: L[i, c] = (A[i, c] − Σ_{j0 ≤ m < c} L[i, m] L[c, m]) / L[c, c].
        a[j1 * k..].par_chunks_mut(k).for_each(|row| {
            let block = &mut row[j0..j1];
            for c in 0..w {
                let s = block[c] - dot(&block[..c], &diag[c * w..c * w + c]);
                block[c] = s / diag[c * w + c];
            }
        });
    }
    Ok(())
}

/// Unblocked Cholesky of the diagonal block `[j0..j1, j0..j1]`, whose entries already have the
/// columns before j0 subtracted.
fn factor_diagonal_block(a: &mut [f64], k: usize, j0: usize, j1: usize) -> Result<(), String> {
    for i in j0..j1 {
        for j in j0..=i {
            let s = a[i * k + j] - dot(&a[i * k + j0..i * k + j], &a[j * k + j0..j * k + j]);
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(format!(
                        "the dampened Hessian is not positive definite (pivot {i} is {s:e}): raise the dampening"
                    ));
                }
                a[i * k + i] = s.sqrt();
            } else {
                a[i * k + j] = s / a[j * k + j];
            }
        }
    }
    Ok(())
}

/// The inverse of a lower triangular `[K, K]` matrix, by column blocks in parallel. Within
/// block J, row block I of X = L⁻¹ is −L[I,I]⁻¹ · L[I, J..I] · X[J..I, J], row blocks in order.
fn lower_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let starts: Vec<usize> = (0..k).step_by(NB).collect();
    let width = |s: usize| (s + NB).min(k) - s;
    let diagonal: Vec<Vec<f64>> = starts
        .par_iter()
        .map(|&s| block_inverse(l, k, s, width(s)))
        .collect();
    let columns: Vec<Vec<f64>> = starts
        .par_iter()
        .enumerate()
        .map(|(jb, &j0)| {
            let w = width(j0);
            // X[j0.., J], rows j0..K, `w` wide.
            let mut x = vec![0f64; (k - j0) * w];
            x[..w * w].copy_from_slice(&diagonal[jb]);
            let mut t = vec![0f64; NB * w];
            for (ib, &i0) in starts.iter().enumerate().skip(jb + 1) {
                let m = width(i0);
                let (done, rest) = x.split_at_mut((i0 - j0) * w);
                let lhs = (&l[i0 * k + j0..], k, 1);
                gemm((m, w, i0 - j0), (&mut t, w), 0.0, (lhs, (done, w, 1)), 1.0);
                let d = (&diagonal[ib][..], m, 1);
                gemm(
                    (m, w, m),
                    (&mut rest[..m * w], w),
                    0.0,
                    (d, (&t, w, 1)),
                    -1.0,
                );
            }
            x
        })
        .collect();
    let mut inv = vec![0f64; k * k];
    for (&j0, x) in starts.iter().zip(&columns) {
        let w = width(j0);
        for (r, row) in x.chunks_exact(w).enumerate() {
            inv[(j0 + r) * k + j0..(j0 + r) * k + j0 + w].copy_from_slice(row);
        }
    }
    inv
}

/// The inverse of the lower triangular diagonal block `[s..s+w, s..s+w]` of `l`, `[w, w]`.
fn block_inverse(l: &[f64], k: usize, s: usize, w: usize) -> Vec<f64> {
    let at = |i: usize, j: usize| l[(s + i) * k + s + j];
    let mut x = vec![0f64; w * w];
    for j in 0..w {
        x[j * w + j] = 1.0 / at(j, j);
        for i in j + 1..w {
            let sum: f64 = (j..i).map(|m| at(i, m) * x[m * w + j]).sum();
            x[i * w + j] = -sum / at(i, i);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_reproduces_the_inverse() {
        // H = [[4, 2], [2, 3]]: H⁻¹ = [[3, -2], [-2, 4]] / 8.
        let u = inverse_cholesky_upper(vec![4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(u[2], 0.0, "upper triangular");
        let inv = |a: usize, b: usize| (0..2).map(|m| u[m * 2 + a] * u[m * 2 + b]).sum::<f32>();
        for (a, b, want) in [(0, 0, 3.0 / 8.0), (0, 1, -2.0 / 8.0), (1, 1, 4.0 / 8.0)] {
            assert!((inv(a, b) - want).abs() < 1e-6, "({a}, {b}): {}", inv(a, b));
        }
        assert!(inverse_cholesky_upper(vec![1.0, 2.0, 2.0, 1.0], 2)
            .unwrap_err()
            .contains("not positive definite"));
    }

    /// H = XᵀX + I of a seeded X, `[k, k]`.
    fn spd(k: usize) -> Vec<f64> {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let rows = k + 7;
        let x: Vec<f64> = (0..rows * k).map(|_| next()).collect();
        (0..k * k)
            .map(|i| {
                let (a, b) = (i / k, i % k);
                (0..rows).map(|r| x[r * k + a] * x[r * k + b]).sum::<f64>()
                    + f64::from(u8::from(a == b))
            })
            .collect()
    }

    #[test]
    fn blocked_factors_match_the_definitions_across_block_edges() {
        // Sizes below, at and across the block size, with a ragged last block.
        for k in [1, 5, NB - 1, NB, NB + 1, 2 * NB + 17] {
            let h = spd(k);
            let mut l = h.clone();
            cholesky_in_place(&mut l, k).unwrap();
            // LLᵀ = H over the lower triangle.
            for i in 0..k {
                for j in 0..=i {
                    let v: f64 = (0..=j).map(|m| l[i * k + m] * l[j * k + m]).sum();
                    assert!(
                        (v - h[i * k + j]).abs() < 1e-9 * (1.0 + h[i * k + j].abs()),
                        "k {k}: LLᵀ at ({i}, {j})"
                    );
                }
            }
            // L · L⁻¹ = I.
            let zero_upper: Vec<f64> = (0..k * k)
                .map(|i| if i % k <= i / k { l[i] } else { 0.0 })
                .collect();
            let inv = lower_inverse(&zero_upper, k);
            for i in 0..k {
                for j in 0..k {
                    let v: f64 = (0..k).map(|m| zero_upper[i * k + m] * inv[m * k + j]).sum();
                    let want = f64::from(u8::from(i == j));
                    assert!(
                        (v - want).abs() < 1e-9,
                        "k {k}: (L L⁻¹) at ({i}, {j}) is {v}"
                    );
                }
            }
            // UᵀU = H⁻¹: H · UᵀU = I.
            let u = inverse_cholesky_upper(h.clone(), k).unwrap();
            for i in 0..k {
                for j in 0..k {
                    let hinv = |a: usize, b: usize| {
                        (0..k)
                            .map(|m| f64::from(u[m * k + a]) * f64::from(u[m * k + b]))
                            .sum::<f64>()
                    };
                    if j == i || (i * 7 + j) % 13 == 0 {
                        let v: f64 = (0..k).map(|m| h[i * k + m] * hinv(m, j)).sum();
                        let want = f64::from(u8::from(i == j));
                        assert!(
                            (v - want).abs() < 1e-4,
                            "k {k}: (H UᵀU) at ({i}, {j}) is {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_factor_does_not_depend_on_the_thread_count() {
        let k = 3 * NB + 5;
        let h = spd(k);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| inverse_cholesky_upper(h.clone(), k).unwrap())
        };
        assert_eq!(run(1), run(3));
    }
}
