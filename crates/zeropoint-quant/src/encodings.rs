//! The quantization parameters of a run as JSON, the way AIMET's encodings files give them: per
//! tensor the bits, symmetry, scale, zero-point and offset (= −zero-point, AIMET's convention),
//! and the real range [min, max] the grid covers; per-channel values as lists.

use serde_json::{json, Map, Value};
use zeropoint_core::{QParams, Scheme};

use crate::ptq::Outcome;
use crate::settings::Settings;

/// The encodings of `o`, quantized with `settings`: `{"weights": {...}, "activations": {...},
/// "biases": {...}}`, each by tensor name.
pub fn encodings(o: &Outcome, settings: &Settings) -> Value {
    let weights: Map<String, Value> = o
        .plan
        .weights
        .iter()
        .filter_map(|w| o.params.weight(&w.name))
        .map(|w| (w.name.clone(), entry(&w.qparams, &settings.weights, None)))
        .collect();
    let activations: Map<String, Value> = o
        .params
        .activations
        .iter()
        .map(|a| {
            (
                a.value.clone(),
                entry(
                    &a.qparams,
                    // A shared grid is its source's, at the source's bit-width.
                    &settings.activation_scheme(a.grid_owner()),
                    a.range,
                ),
            )
        })
        .collect();
    let biases: Map<String, Value> = o
        .params
        .biases
        .iter()
        .map(|b| {
            let doc = json!({"bits": 32, "signed": true, "symmetric": true, "scale": b.scale,
                "zero_point": 0, "offset": 0});
            (b.name.clone(), doc)
        })
        .collect();
    json!({"weights": weights, "activations": activations, "biases": biases})
}

/// One quantizer's entry.
fn entry(qp: &QParams, scheme: &Scheme, range: Option<(f32, f32)>) -> Value {
    let per_channel = qp.scale.len() > 1;
    let real: Vec<(f32, f32)> = (0..qp.scale.len())
        .map(|i| qp.get(i).real_range(qp.grid))
        .collect();
    let pick = |v: Vec<Value>| if per_channel { json!(v) } else { v[0].clone() };
    json!({
        "bits": scheme.bits,
        "signed": scheme.signed,
        "symmetric": scheme.symmetric,
        "granularity": format!("{:?}", qp.granularity),
        "scale": pick(qp.scale.iter().map(|&s| json!(s)).collect()),
        "zero_point": pick(qp.zero_point.iter().map(|&z| json!(z)).collect()),
        "offset": pick(qp.zero_point.iter().map(|&z| json!(-z)).collect()),
        "min": pick(real.iter().map(|r| json!(r.0)).collect()),
        "max": pick(real.iter().map(|r| json!(r.1)).collect()),
        "calibrated_range": range.map(|r| [r.0, r.1]),
    })
}
