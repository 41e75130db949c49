//! Matrix products: MatMul (numpy semantics, batch broadcasting) and Gemm.

use candle_core::Tensor;

use super::{c, check_output, like, one, Cx, R};
use crate::value::Value;

/// candle's matrix product asks on every call how many threads to use, and without
/// RAYON_NUM_THREADS its answer reads /proc/cpuinfo: 26 µs a call on a 2-core VM, more with
/// more cores, and 7 992 calls in MiniLM-L3's static quantize. This sets RAYON_NUM_THREADS to
/// that same answer, read once, after rayon has sized its global pool (it reads the variable
/// too, and counts logical cores where candle counts physical ones): both keep the thread
/// counts they would have chosen. An explicit RAYON_NUM_THREADS is left alone. Call it before
/// any other thread reads the environment.
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        rayon::current_num_threads();
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

pub fn matmul(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    one(like(matmul_nd(cx.float(0)?, cx.float(1)?)?, v))
}

/// numpy's matmul: batch dimensions broadcast; a 1-D operand is a row (left) or column (right)
/// vector whose dimension is removed from the result.
pub(crate) fn matmul_nd(a: &Tensor, b: &Tensor) -> R<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let a2 = if ra == 1 {
        c(a.unsqueeze(0))?
    } else {
        a.clone()
    };
    let b2 = if rb == 1 {
        c(b.unsqueeze(1))?
    } else {
        b.clone()
    };
    // An outer product outgrows its operands: [n, 1]·[1, n] is n².
    let (da, db) = (a2.dims(), b2.dims());
    if da.len() >= 2 && db.len() >= 2 {
        let batch = super::broadcast_shape(&da[..da.len() - 2], &db[..db.len() - 2])?;
        let mut out = batch;
        out.extend([da[da.len() - 2], db[db.len() - 1]]);
        check_output(&out, a2.dtype())?;
    }
    let (a2, b2) = (c(a2.contiguous())?, c(b2.contiguous())?);
    let mut out = if a2.rank() == 2 && b2.rank() == 2 {
        c(a2.matmul(&b2))?
    } else {
        c(a2.broadcast_matmul(&b2))?
    };
    if rb == 1 {
        out = c(out.squeeze(out.rank() - 1))?;
    }
    if ra == 1 {
        out = c(out.squeeze(out.rank() - if rb == 1 { 1 } else { 2 }))?;
    }
    Ok(out)
}

/// `t` itself where it is contiguous or the transpose of a contiguous matrix, else a copy.
fn plain_or_transposed(t: &Tensor) -> R<Tensor> {
    if t.is_contiguous() || (t.rank() == 2 && t.t()?.is_contiguous()) {
        return Ok(t.clone());
    }
    c(t.contiguous())
}

pub fn gemm(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let mut a = cx.float(0)?.clone();
    let mut b = cx.float(1)?.clone();
    if cx.int("transA", 0)? != 0 {
        a = c(a.t())?;
    }
    let trans_b = cx.int("transB", 0)? != 0;
    if trans_b {
        b = c(b.t())?;
    }
    let alpha = cx.float_attr("alpha", 1.0)? as f64;
    let beta = cx.float_attr("beta", 1.0)? as f64;
    if let (Some(&m), Some(&n)) = (a.dims().first(), b.dims().last()) {
        check_output(&[m, n], a.dtype())?;
    }
    // A weight stored [N, K] (transB) is read row by row in place (see `linear`). Otherwise
    // candle multiplies a transposed contiguous operand in place: making it contiguous would
    // copy a [K, N] weight, strided, on every call (a 16 MB classifier took 3/4 of a run).
    let mut y = if trans_b && a.rank() == 2 && b.rank() == 2 {
        super::linear::matmul_bt(&a, cx.float(1)?)?
    } else {
        c(plain_or_transposed(&a)?.matmul(&plain_or_transposed(&b)?))?
    };
    if alpha != 1.0 {
        y = c(y.affine(alpha, 0.0))?;
    }
    if let Some(cv) = cx.opt(2) {
        let mut ct = cv.tensor.clone();
        if beta != 1.0 {
            ct = c(ct.affine(beta, 0.0))?;
        }
        y = c(y.broadcast_add(&ct))?;
    }
    one(like(y, v))
}
