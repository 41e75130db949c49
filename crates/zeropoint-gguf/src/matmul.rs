//! Matrix products for the calibration forward pass and AWQ's error measure: the `gemm` crate
//! behind a bounds-checked call.

/// An operand of [`product`]: its values and the strides of its rows and columns.
pub(crate) struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Strided<'a> {
    /// A matrix stored row by row, rows `stride` apart.
    pub(crate) fn rows(data: &'a [f32], stride: usize) -> Strided<'a> {
        Strided {
            data,
            rows: stride,
            cols: 1,
        }
    }

    /// The transpose of a matrix stored row by row, rows `stride` apart.
    pub(crate) fn transposed(data: &'a [f32], stride: usize) -> Strided<'a> {
        Strided {
            data,
            rows: 1,
            cols: stride,
        }
    }
}

/// `dst` (`m × n`, rows `dst_rows` apart) = `alpha` · `lhs` (`m × k`) · `rhs` (`k × n`), by the
/// `gemm` crate (in parallel over the output when `parallel`, never splitting the sum over k, so
/// the result does not depend on the thread count). Every index is checked to be in bounds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rows: usize,
    lhs: Strided,
    rhs: Strided,
    alpha: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        dst.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let last = |s: &Strided, r: usize, c: usize| (r - 1) * s.rows + (c - 1) * s.cols;
    assert!(
        last(&lhs, m, k) < lhs.data.len()
            && last(&rhs, k, n) < rhs.data.len()
            && (m - 1) * dst_rows + n - 1 < dst.len(),
        "operands out of bounds"
    );
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above keeps every element gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rows as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cols as isize,
            lhs.rows as isize,
            rhs.data.as_ptr(),
            rhs.cols as isize,
            rhs.rows as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}
