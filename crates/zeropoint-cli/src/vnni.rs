//! Whether ONNX Runtime's int8 kernels can overflow on this CPU, and the note that says so.
//!
//! Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with `vpmaddubsw`,
//! which adds each pair of adjacent products in a saturating 16-bit integer: 255·127·2 does not
//! fit, 255·64·2 does. On such a CPU an exported W8A8 model can compute something else than the
//! model zeropoint simulated (captcha-crnn on an AVX2 EPYC: 12.7 dB output SQNR in ONNX Runtime
//! against 25.9 dB in zeropoint's engine; 24.7 dB in both with 7-bit weights). 7-bit weights
//! are coarser, so whether they win depends on the model (malviz-resnet18 on the same CPU: 32.1
//! dB with 8-bit weights, 24.3 with 7-bit): the note suggests and does not decide.

use zeropoint_core::Scheme;

/// Prints a note on stderr when this CPU is one whose ONNX Runtime int8 kernels can overflow
/// with these schemes (8-bit signed weights, 8-bit activations, pairs not limited), and says
/// what avoids it: `remedies`, the flags the mode takes ("--limit-pairs or --reduce-range" for
/// static quantization; dynamic quantization refuses --limit-pairs).
pub fn note_overflow(weights: &Scheme, activation_bits: u32, limited: bool, remedies: &str) {
    if weights.bits == 8 && weights.signed && activation_bits == 8 && !limited && overflowing_cpu()
    {
        eprintln!(
            "note: this CPU has no VNNI: ONNX Runtime's int8 Conv/MatMul kernels on it add pairs of uint8·int8 products in 16 bits, which 8-bit weights can overflow; if the model will run on such a CPU, also try {remedies} (no overflow, a coarser grid) and compare with `zeropoint eval --runtime ort`"
        );
    }
}

/// An x86 CPU with AVX2 (ONNX Runtime's int8 kernels use it) but neither AVX-VNNI nor
/// AVX-512 VNNI.
fn overflowing_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && !std::arch::is_x86_feature_detected!("avxvnni")
            && !std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
