//! SVG histograms of a tensor with quantization grids drawn over them, written by hand: a plot is
//! a few dozen rectangles and lines, not worth a plotting dependency.
//!
//! The bars show log10(1 + count), so that the sparse tails (the outliers that decide the range)
//! stay visible next to the bulk. The int4 grid is drawn as one line per level, the int8 grid as
//! ticks along the axis, and each grid's clipping range as dashed lines. Grids are per-tensor
//! (a per-channel scheme has one grid per channel) with the symmetry `inspect` recommends.

use std::fmt::Write as _;

use anyhow::Result;
use zeropoint_core::{QParam, Scheme};

use crate::table::num;
use zeropoint_quant::analysis::inspect::Analysis;

const W: f64 = 760.0;
const H: f64 = 380.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 70.0;
const BINS: usize = 160;

/// A file name for a tensor name: letters, digits, '-', '_' and '.' kept, the rest '_'.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "tensor".into()
    } else {
        s
    }
}

/// `s` as XML text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The per-tensor grid drawn for a bit-width: the recommended symmetry, per-tensor.
fn grid_param(a: &Analysis, bits: u32) -> Result<(Scheme, QParam)> {
    let symmetric = a.recommended(bits).is_none_or(|c| c.scheme.symmetric);
    let scheme = Scheme::new(bits).symmetric(symmetric);
    let p = QParam::from_range(&scheme, a.summary.min, a.summary.max)?;
    Ok((scheme, p))
}

/// Where the plot is drawn: the data range (with a margin) mapped onto the plot area.
struct Frame {
    lo: f64,
    hi: f64,
    pad: f64,
    base: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.lo) / (self.hi - self.lo) * (W - LEFT - RIGHT)
    }
}

/// The int8 and int4 grids drawn: scheme, parameters, and the real range each covers.
struct Grids {
    s8: Scheme,
    p8: QParam,
    s4: Scheme,
    p4: QParam,
}

pub fn histogram_svg(a: &Analysis) -> Result<String> {
    let s = &a.summary;
    let (s8, p8) = grid_param(a, 8)?;
    let (s4, p4) = grid_param(a, 4)?;
    let grids = Grids { s8, p8, s4, p4 };
    let (lo8, hi8) = p8.real_range(s8.grid());
    let (lo4, hi4) = p4.real_range(s4.grid());
    let lo = f64::from(s.min.min(lo4).min(lo8));
    let hi = f64::from(s.max.max(hi4).max(hi8));
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let pad = 0.03 * (hi - lo);
    let frame = Frame {
        lo: lo - pad,
        hi: hi + pad,
        pad,
        base: TOP + (H - TOP - BOTTOM),
    };
    let mut svg = String::new();
    let w = &mut svg;
    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(w, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    title(w, a);
    bars(w, a, &frame);
    grid_lines(w, &grids, &frame);
    range_lines(w, a, &frame);
    axis(w, &frame);
    legend(w, &grids);
    let _ = writeln!(w, "</svg>");
    Ok(svg)
}

/// The tensor's name and what it holds.
fn title(w: &mut String, a: &Analysis) {
    let s = &a.summary;
    let shape: Vec<String> = a.tensor.shape.iter().map(usize::to_string).collect();
    let _ = writeln!(
        w,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(&a.tensor.name)
    );
    let _ = writeln!(
        w,
        r#"<text x="{LEFT}" y="34">[{}] {}, {} values, mean {}, σ {}, kurtosis {}; bars: log10(1 + count)</text>"#,
        shape.join("x"),
        a.tensor.dtype,
        s.len,
        num(s.mean, 3),
        num(s.std, 3),
        num(s.kurtosis, 3)
    );
}

/// The histogram: log10(1 + count) per bin.
fn bars(w: &mut String, a: &Analysis, f: &Frame) {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let counts = zeropoint_core::stats::histogram(&a.tensor.values, BINS, f.lo as f32, f.hi as f32);
    let top = counts
        .iter()
        .map(|&c| (1.0 + c as f64).log10())
        .fold(0.0, f64::max)
        .max(1e-9);
    let bin_w = plot_w / BINS as f64;
    for (i, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
        let h = (1.0 + c as f64).log10() / top * plot_h;
        let _ = writeln!(
            w,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#9aa5b1"><title>{c}</title></rect>"##,
            LEFT + i as f64 * bin_w,
            f.base - h,
            bin_w.max(0.5),
            h
        );
    }
}

/// The int4 levels as lines, the int8 levels as ticks below the axis, each grid's clipping range
/// dashed.
fn grid_lines(w: &mut String, g: &Grids, f: &Frame) {
    let base = f.base;
    let g4 = g.s4.grid();
    for q in g4.qmin..=g4.qmax {
        let v = f64::from((q - g.p4.zero_point) as f32 * g.p4.scale);
        let _ = writeln!(
            w,
            r##"<line x1="{0:.2}" x2="{0:.2}" y1="{TOP}" y2="{base}" stroke="#2b6cb0" stroke-opacity="0.45"/>"##,
            f.x(v)
        );
    }
    let g8 = g.s8.grid();
    for q in g8.qmin..=g8.qmax {
        let v = f64::from((q - g.p8.zero_point) as f32 * g.p8.scale);
        let _ = writeln!(
            w,
            r##"<line x1="{0:.2}" x2="{0:.2}" y1="{base}" y2="{1:.2}" stroke="#38a169" stroke-width="0.6"/>"##,
            f.x(v),
            base + 8.0
        );
    }
    let (lo8, hi8) = g.p8.real_range(g8);
    let (lo4, hi4) = g.p4.real_range(g4);
    for (v, color, label) in [
        (lo8, "#2f855a", "int8 clip"),
        (hi8, "#2f855a", "int8 clip"),
        (lo4, "#c53030", "int4 clip"),
        (hi4, "#c53030", "int4 clip"),
    ] {
        let x = f.x(f64::from(v));
        let _ = writeln!(
            w,
            r#"<line x1="{x:.2}" x2="{x:.2}" y1="{TOP}" y2="{base}" stroke="{color}" stroke-width="1.5" stroke-dasharray="5,3"><title>{label} {v}</title></line>"#
        );
    }
}

/// Each --range estimator's range: a pair of solid lines with the method's name on top.
fn range_lines(w: &mut String, a: &Analysis, f: &Frame) {
    const COLORS: [&str; 6] = [
        "#6b46c1", "#d69e2e", "#dd6b20", "#319795", "#b83280", "#4a5568",
    ];
    let base = f.base;
    for (k, r) in a.ranges.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        for v in [r.min, r.max] {
            let x = f.x(f64::from(v));
            let _ = writeln!(
                w,
                r#"<line x1="{x:.2}" x2="{x:.2}" y1="{TOP}" y2="{base}" stroke="{color}" stroke-width="1.2"><title>{} {v}</title></line>"#,
                escape(&r.method.to_string())
            );
        }
        let _ = writeln!(
            w,
            r#"<text x="{:.2}" y="{:.2}" fill="{color}" font-size="10" stroke="white" stroke-width="3" paint-order="stroke">{} [{}, {}]: {} dB</text>"#,
            LEFT + 4.0,
            TOP + 10.0 + 11.0 * k as f64,
            escape(&r.method.to_string()),
            num(f64::from(r.min), 3),
            num(f64::from(r.max), 3),
            crate::table::db(r.sqnr_db)
        );
    }
}

/// The axis with the data's ends and 0 marked.
fn axis(w: &mut String, f: &Frame) {
    let base = f.base;
    let _ = writeln!(
        w,
        r#"<line x1="{LEFT}" x2="{}" y1="{base}" y2="{base}" stroke="black"/>"#,
        W - RIGHT
    );
    for v in [f.lo + f.pad, 0.0, f.hi - f.pad] {
        if v >= f.lo && v <= f.hi {
            let _ = writeln!(
                w,
                r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
                f.x(v),
                base + 22.0,
                num(v, 4)
            );
        }
    }
}

fn legend(w: &mut String, g: &Grids) {
    let symmetry = |s: &Scheme| {
        if s.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        }
    };
    let _ = writeln!(
        w,
        r##"<text x="{LEFT}" y="{:.2}"><tspan fill="#2b6cb0">│ int4 {} levels (s = {})</tspan>   <tspan fill="#38a169">╵ int8 {} levels (s = {})</tspan>   <tspan fill="#c53030">┆ int4 clip</tspan> <tspan fill="#2f855a">┆ int8 clip</tspan> (per-tensor grids)</text>"##,
        H - 16.0,
        symmetry(&g.s4),
        num(f64::from(g.p4.scale), 3),
        symmetry(&g.s8),
        num(f64::from(g.p8.scale), 3),
    );
}
