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

use crate::inspect::Analysis;
use crate::table::num;

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

fn escape(s: &str) -> String {
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

pub fn histogram_svg(a: &Analysis) -> Result<String> {
    let s = &a.summary;
    let (s8, p8) = grid_param(a, 8)?;
    let (s4, p4) = grid_param(a, 4)?;
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
    let (lo, hi) = (lo - pad, hi + pad);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x_of = |v: f64| LEFT + (v - lo) / (hi - lo) * plot_w;
    let base = TOP + plot_h;

    let counts = zeropoint_core::stats::histogram(&a.tensor.values, BINS, lo as f32, hi as f32);
    let top = counts
        .iter()
        .map(|&c| (1.0 + c as f64).log10())
        .fold(0.0, f64::max)
        .max(1e-9);
    let mut svg = String::new();
    let w = &mut svg;
    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(w, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
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
    let bin_w = plot_w / BINS as f64;
    for (i, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
        let h = (1.0 + c as f64).log10() / top * plot_h;
        let _ = writeln!(
            w,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#9aa5b1"><title>{c}</title></rect>"##,
            LEFT + i as f64 * bin_w,
            base - h,
            bin_w.max(0.5),
            h
        );
    }
    // int4 levels: one line each.
    let g4 = s4.grid();
    for q in g4.qmin..=g4.qmax {
        let v = f64::from((q - p4.zero_point) as f32 * p4.scale);
        let _ = writeln!(
            w,
            r##"<line x1="{0:.2}" x2="{0:.2}" y1="{TOP}" y2="{base}" stroke="#2b6cb0" stroke-opacity="0.45"/>"##,
            x_of(v)
        );
    }
    // int8 levels: ticks below the axis.
    let g8 = s8.grid();
    for q in g8.qmin..=g8.qmax {
        let v = f64::from((q - p8.zero_point) as f32 * p8.scale);
        let _ = writeln!(
            w,
            r##"<line x1="{0:.2}" x2="{0:.2}" y1="{base}" y2="{1:.2}" stroke="#38a169" stroke-width="0.6"/>"##,
            x_of(v),
            base + 8.0
        );
    }
    for (v, color, label) in [
        (lo8, "#2f855a", "int8 clip"),
        (hi8, "#2f855a", "int8 clip"),
        (lo4, "#c53030", "int4 clip"),
        (hi4, "#c53030", "int4 clip"),
    ] {
        let x = x_of(f64::from(v));
        let _ = writeln!(
            w,
            r#"<line x1="{x:.2}" x2="{x:.2}" y1="{TOP}" y2="{base}" stroke="{color}" stroke-width="1.5" stroke-dasharray="5,3"><title>{label} {v}</title></line>"#
        );
    }
    // Each --range estimator's range: a pair of solid lines with the method's name on top.
    const COLORS: [&str; 6] = [
        "#6b46c1", "#d69e2e", "#dd6b20", "#319795", "#b83280", "#4a5568",
    ];
    for (k, r) in a.ranges.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        for v in [r.min, r.max] {
            let x = x_of(f64::from(v));
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
    let _ = writeln!(
        w,
        r#"<line x1="{LEFT}" x2="{}" y1="{base}" y2="{base}" stroke="black"/>"#,
        W - RIGHT
    );
    for v in [lo + pad, 0.0, hi - pad] {
        if v >= lo && v <= hi {
            let _ = writeln!(
                w,
                r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
                x_of(v),
                base + 22.0,
                num(v, 4)
            );
        }
    }
    let _ = writeln!(
        w,
        r##"<text x="{LEFT}" y="{:.2}"><tspan fill="#2b6cb0">│ int4 {} levels (s = {})</tspan>   <tspan fill="#38a169">╵ int8 {} levels (s = {})</tspan>   <tspan fill="#c53030">┆ int4 clip</tspan> <tspan fill="#2f855a">┆ int8 clip</tspan> (per-tensor grids)</text>"##,
        H - 16.0,
        if s4.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        num(f64::from(p4.scale), 3),
        if s8.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        num(f64::from(p8.scale), 3),
    );
    let _ = writeln!(w, "</svg>");
    Ok(svg)
}
