//! The report of SmoothQuant's channel scaling, for static and dynamic quantization alike.

use crate::table::num;

/// What SmoothQuant did, one line per smoothed layer input.
pub fn print(smoothed: &[zeropoint_quant::smooth_quant::Smoothed]) {
    let done: Vec<_> = smoothed.iter().filter(|s| s.alpha > 0.0).collect();
    println!(
        "SmoothQuant: {} of {} layer inputs smoothed (output error on the search rows, before -> after)",
        done.len(),
        smoothed.len()
    );
    for s in done {
        println!(
            "  α {:.2}  {} -> {}  {} ({} layers), 1/s into {}",
            s.alpha,
            num(s.error_before, 4),
            num(s.error_after, 4),
            s.input,
            s.layers.len(),
            s.folded_into
        );
    }
}
