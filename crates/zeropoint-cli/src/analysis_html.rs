//! `analyze`'s report as one self-contained HTML page: tables and inline SVG plots, no script,
//! no external file, so that it opens offline in any browser.

use std::fmt::Write as _;

use zeropoint_quant::analyze::{Analysis, Distribution};

use crate::plot::escape;
use crate::scores::{label, score, verdict_16_bits, verdict_split};
use crate::table::{db, num};

const STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#1a202c}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd5e0;padding:3px 8px;\
text-align:left;font-size:13px}th{background:#edf2f7}td.n{text-align:right}\
p.note{color:#4a5568;font-size:13px}";

/// The whole page for the analysis of `model`.
pub fn page(model: &str, a: &Analysis) -> String {
    let mut w = String::new();
    let _ = write!(
        w,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>zeropoint analyze: {0}</title>\
         <style>{STYLE}</style></head><body><h1>Quantization analysis of {0}</h1>",
        escape(model)
    );
    overview(&mut w, a);
    let _ = write!(
        w,
        "<h2>Per-quantizer sensitivity</h2><p class=\"note\">Output SQNR with only this quantizer \
         enabled (bar; shorter is more harmful) and with every quantizer but this one (tick), on \
         the first {} samples.</p>",
        a.sensitivity_samples
    );
    w.push_str(&sensitivity_svg(a));
    sensitivity_table(&mut w, a);
    let _ = write!(
        w,
        "<h2>Distributions of the most harmful quantizers</h2><p class=\"note\">Histogram of the \
         values (weights as stored, activations on the analysis samples), log10(1 + count); \
         dashed: the clipping range (per-channel: the narrowest and widest channel's).</p>"
    );
    for d in &a.distributions {
        w.push_str(&histogram_svg(d));
    }
    suggestions(&mut w, a);
    w.push_str("</body></html>\n");
    w
}

fn overview(w: &mut String, a: &Analysis) {
    let _ = write!(
        w,
        "<p class=\"note\">Scores: the simulated model's outputs against the float model's on {} \
         calibration samples (calibrated on {}).</p><table><tr><th>model</th><th>score</th>\
         <th>reading</th></tr>",
        a.samples, a.calibration_samples
    );
    let rows = [
        (
            "16-bit weights and activations",
            &a.check_16_bits,
            verdict_16_bits(&a.check_16_bits),
        ),
        ("quantized", &a.quantized, ""),
        ("weights only", &a.weights_only, ""),
        ("activations only", &a.activations_only, verdict_split(a)),
    ];
    for (name, s, reading) in rows {
        let _ = write!(
            w,
            "<tr><td>{name}</td><td>{}</td><td>{reading}</td></tr>",
            score(s)
        );
    }
    w.push_str("</table>");
}

fn sensitivity_table(w: &mut String, a: &Analysis) {
    w.push_str(
        "<table><tr><th>quantizer</th><th>node</th><th>op</th><th>alone dB</th>\
         <th>all but dB</th></tr>",
    );
    for s in &a.sensitivities {
        let _ = write!(
            w,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&label(&s.quantizer)),
            escape(&s.node),
            escape(&s.op),
            db(s.alone.sqnr_db),
            db(s.all_but.sqnr_db)
        );
    }
    w.push_str("</table>");
}

/// What `*` after a fix's gain means, in the report and `analyze`'s table.
pub const FITTED_NOTE: &str =
    "* fitted on calibration samples that include the scored ones: held out, it may gain less";

/// What `†` after a fix's gain means.
pub const HELD_OUT_NOTE: &str = "† fitted on the first calibration samples, scored (with the \
     quantized model it is compared with) on the samples after them, which the fit did not see";

/// `*` for a fix fitted on the scored samples, `†` for one scored on held-out samples, else a
/// space that keeps a column aligned.
pub fn fitted_mark(s: &zeropoint_quant::analyze::Suggestion) -> &'static str {
    if s.fitted_on_scored_samples {
        "*"
    } else if s.held_out.is_some() {
        "†"
    } else {
        " "
    }
}

/// The notes for the marks `fitted_mark` gave the fixes.
pub fn fitted_notes(a: &Analysis) -> Vec<String> {
    let mut notes = Vec::new();
    if a.suggestions.iter().any(|s| s.fitted_on_scored_samples) {
        notes.push(FITTED_NOTE.to_string());
    }
    let held: Vec<usize> = a
        .suggestions
        .iter()
        .filter_map(|s| s.held_out.as_ref().map(|h| h.samples))
        .collect();
    if let (Some(least), Some(most)) = (held.iter().min(), held.iter().max()) {
        let count = if least == most {
            format!("{least}")
        } else {
            format!("{least} to {most}")
        };
        notes.push(format!("{HELD_OUT_NOTE} ({count} samples)"));
    }
    notes
}

fn suggestions(w: &mut String, a: &Analysis) {
    if a.suggestions.is_empty() {
        return;
    }
    w.push_str(
        "<h2>Fixes, each measured alone</h2><table><tr><th>quantize option</th><th>score</th>\
         <th>gain dB</th><th>why</th></tr>",
    );
    for s in &a.suggestions {
        let _ = write!(
            w,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{:+.1}{}</td><td>{}</td></tr>",
            escape(&s.options),
            score(&s.score),
            s.gain_db,
            fitted_mark(s),
            escape(&s.why)
        );
    }
    w.push_str("</table>");
    for note in fitted_notes(a) {
        let _ = write!(w, "<p>{}</p>", escape(&note));
    }
}

/// Horizontal bars: each of the 40 most harmful quantizers' SQNR alone, a tick at all-but.
fn sensitivity_svg(a: &Analysis) -> String {
    const ROW: f64 = 16.0;
    const LEFT: f64 = 300.0;
    const WIDTH: f64 = 900.0;
    let shown: Vec<_> = a.sensitivities.iter().take(40).collect();
    let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let top = shown
        .iter()
        .flat_map(|s| [finite(s.alone.sqnr_db), finite(s.all_but.sqnr_db)])
        .fold(1.0, f64::max);
    let x = |v: f64| LEFT + finite(v) / top * (WIDTH - LEFT - 60.0);
    let height = 30.0 + ROW * shown.len() as f64;
    let mut w = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    for (i, s) in shown.iter().enumerate() {
        let y = 20.0 + ROW * i as f64;
        let alone = if s.alone.sqnr_db.is_finite() {
            x(s.alone.sqnr_db)
        } else {
            WIDTH - 60.0
        };
        let name = escape(&shorten(&label(&s.quantizer), 44));
        let (a, b) = (db(s.alone.sqnr_db), db(s.all_but.sqnr_db));
        let (tx, ty, bar_y, bar_w, bar_h) = (
            LEFT - 6.0,
            y + 11.0,
            y + 2.0,
            (alone - LEFT).max(1.0),
            ROW - 4.0,
        );
        let (tick, tick_end, value_x) = (x(s.all_but.sqnr_db), y + ROW, alone + 4.0);
        let _ = write!(
            w,
            r##"<text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{name}</text><rect x="{LEFT}" y="{bar_y:.1}" width="{bar_w:.1}" height="{bar_h:.1}" fill="#4299e1"><title>{a} dB alone</title></rect><line x1="{tick:.1}" x2="{tick:.1}" y1="{y:.1}" y2="{tick_end:.1}" stroke="#c53030" stroke-width="2"><title>{b} dB all but</title></line><text x="{value_x:.1}" y="{ty:.1}">{a}</text>"##
        );
    }
    w.push_str("</svg>");
    w
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(n - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// One quantizer's histogram with its clipping range.
fn histogram_svg(d: &Distribution) -> String {
    const W: f64 = 760.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 40.0;
    const TOP: f64 = 44.0;
    const BASE: f64 = H - 40.0;
    let span = f64::from(d.hi - d.lo).max(f64::MIN_POSITIVE);
    let x = |v: f32| LEFT + f64::from(v - d.lo) / span * (W - 2.0 * LEFT);
    let peak = d
        .counts
        .iter()
        .map(|&c| (1.0 + c as f64).log10())
        .fold(1e-9, f64::max);
    let mut w = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11"><text x="{LEFT}" y="16" font-size="13" font-weight="bold">{}</text><text x="{LEFT}" y="32">{} bits, data [{}, {}], {} of the values clipped, step {}</text>"#,
        escape(&label(&d.quantizer)),
        d.bits,
        num(f64::from(d.min), 4),
        num(f64::from(d.max), 4),
        percent(d.clipped),
        steps(&d.scale)
    );
    let bin = (W - 2.0 * LEFT) / d.counts.len().max(1) as f64;
    for (i, &c) in d.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
        let h = (1.0 + c as f64).log10() / peak * (BASE - TOP);
        let _ = write!(
            w,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{h:.2}" fill="#9aa5b1"><title>{c}</title></rect>"##,
            LEFT + i as f64 * bin,
            BASE - h,
            bin.max(0.5)
        );
    }
    for v in clip_ends(d) {
        let _ = write!(
            w,
            r##"<line x1="{0:.2}" x2="{0:.2}" y1="{TOP}" y2="{BASE}" stroke="#c53030" stroke-width="1.5" stroke-dasharray="5,3"><title>clip {v}</title></line>"##,
            x(v)
        );
    }
    let _ = write!(
        w,
        r#"<line x1="{LEFT}" x2="{}" y1="{BASE}" y2="{BASE}" stroke="black"/><text x="{LEFT}" y="{}">{}</text><text x="{}" y="{1}" text-anchor="end">{}</text></svg>"#,
        W - LEFT,
        BASE + 16.0,
        num(f64::from(d.lo), 4),
        W - LEFT,
        num(f64::from(d.hi), 4)
    );
    w
}

/// The clipping range's ends drawn: both ends of a per-tensor range; the lowest and highest
/// of each end over a per-channel quantizer's channels.
fn clip_ends(d: &Distribution) -> Vec<f32> {
    let fold = |f: fn(f32, f32) -> f32, init: f32, pick: fn(&(f32, f32)) -> f32| {
        d.clip.iter().map(pick).fold(init, f)
    };
    let mut ends = vec![
        fold(f32::min, f32::INFINITY, |r| r.0),
        fold(f32::max, f32::NEG_INFINITY, |r| r.0),
        fold(f32::min, f32::INFINITY, |r| r.1),
        fold(f32::max, f32::NEG_INFINITY, |r| r.1),
    ];
    ends.dedup();
    ends
}

fn percent(f: f64) -> String {
    format!("{}%", num(100.0 * f, 3))
}

/// "0.0123" for one step, "0.001 to 0.02 (64 channels)" for several.
fn steps(scale: &[f32]) -> String {
    let lo = scale.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = scale.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if scale.len() == 1 {
        num(f64::from(lo), 4)
    } else {
        format!(
            "{} to {} ({} channels)",
            num(f64::from(lo), 3),
            num(f64::from(hi), 3),
            scale.len()
        )
    }
}
