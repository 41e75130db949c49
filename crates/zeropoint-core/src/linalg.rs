//! Dense linear algebra GPTQ needs, in f64 and plain loops (the matrices are one layer's inputs
//! wide): the Cholesky factor of the inverse of a symmetric positive definite matrix.

use rayon::prelude::*;

/// U, upper triangular with a positive diagonal, such that H⁻¹ = UᵀU, as f32 `[K, K]`.
///
/// With P the reversal of the index order and PHP = LLᵀ (Cholesky), H = RRᵀ with R = PLP upper
/// triangular, so H⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹ = P L⁻¹ P: one factorization and one triangular
/// inverse instead of inverting H and factorizing again.
pub fn inverse_cholesky_upper(h: &[f64], k: usize) -> Result<Vec<f32>, String> {
    let reversed: Vec<f64> = (0..k * k).map(|i| h[k * k - 1 - i]).collect();
    let l = cholesky(&reversed, k)?;
    let inv = lower_inverse(&l, k);
    Ok((0..k * k).map(|i| inv[k * k - 1 - i] as f32).collect())
}

/// Σ aᵢbᵢ in four interleaved partial sums: the dependency chain of one running sum made these
/// O(k³) loops latency-bound (a fixed order all the same, so results do not vary between runs).
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

/// The lower Cholesky factor of a symmetric positive definite `[K, K]` matrix.
fn cholesky(a: &[f64], k: usize) -> Result<Vec<f64>, String> {
    let mut l = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let dot = dot(&l[i * k..i * k + j], &l[j * k..j * k + j]);
            let s = a[i * k + j] - dot;
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(format!(
                        "the dampened Hessian is not positive definite (pivot {i} is {s:e}): raise the dampening"
                    ));
                }
                l[i * k + i] = s.sqrt();
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    }
    Ok(l)
}

/// The inverse of a lower triangular `[K, K]` matrix, column by column in parallel.
fn lower_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let columns: Vec<Vec<f64>> = (0..k)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0f64; k];
            x[j] = 1.0 / l[j * k + j];
            for i in j + 1..k {
                let dot = dot(&l[i * k + j..i * k + i], &x[j..i]);
                x[i] = -dot / l[i * k + i];
            }
            x
        })
        .collect();
    (0..k * k).map(|i| columns[i % k][i / k]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_reproduces_the_inverse() {
        // H = [[4, 2], [2, 3]]: H⁻¹ = [[3, -2], [-2, 4]] / 8.
        let u = inverse_cholesky_upper(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(u[2], 0.0, "upper triangular");
        let inv = |a: usize, b: usize| (0..2).map(|m| u[m * 2 + a] * u[m * 2 + b]).sum::<f32>();
        for (a, b, want) in [(0, 0, 3.0 / 8.0), (0, 1, -2.0 / 8.0), (1, 1, 4.0 / 8.0)] {
            assert!((inv(a, b) - want).abs() < 1e-6, "({a}, {b}): {}", inv(a, b));
        }
        assert!(inverse_cholesky_upper(&[1.0, 2.0, 2.0, 1.0], 2)
            .unwrap_err()
            .contains("not positive definite"));
    }
}
