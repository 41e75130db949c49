//! How `analyze` and `quantize` print scores: an output SQNR with its agreement, a quantizer's
//! name, and what the debugging flow's first measurements say.

use zeropoint_quant::analyze::Analysis;
use zeropoint_quant::sensitivity::{Quantizer, Score};

use crate::table::db;

/// "30.2 dB, agreement 99.10%".
pub fn score(s: &Score) -> String {
    let agreement = s
        .agreement
        .map_or(String::new(), |a| format!(", agreement {:.2}%", 100.0 * a));
    format!("{} dB{agreement}", db(s.sqnr_db))
}

/// What the 16-bit check says about the simulation.
pub fn verdict_16_bits(s: &Score) -> &'static str {
    if s.sqnr_db >= 50.0 {
        "the simulation is sound: the error below is quantization's"
    } else {
        "suspiciously low: an op the simulation does not model well, or data outside the calibrated range"
    }
}

/// Which of weights and activations costs more.
pub fn verdict_split(a: &Analysis) -> &'static str {
    if a.weights_only.sqnr_db < a.activations_only.sqnr_db {
        "weights cost more"
    } else {
        "activations cost more"
    }
}

/// "weight conv1.weight" or "activation relu1".
pub fn label(q: &Quantizer) -> String {
    match q {
        Quantizer::Weight(w) => format!("weight {w}"),
        Quantizer::Activation(a) => format!("activation {a}"),
    }
}
