//! The recurrent operators LSTM, GRU and RNN, per the ONNX specification: OCR recognisers
//! (PaddleOCR, ddddocr), sequence taggers (LAC), seq2seq encoders and voice-activity detectors
//! (Silero VAD) are exported with them, and calibration has to run through them.
//!
//! Each direction runs as one loop over time on candle tensors, so gradients flow as through any
//! other operator. The input projection `X·Wᵀ + Wb` is one matrix product for all steps; a step
//! adds `H·Rᵀ + Rb` for the whole batch and applies the gates (LSTM `iofc`, GRU `zrh`, RNN one),
//! in f32 whatever the float type of the operands.
//!
//! Supported: directions forward, reverse and bidirectional; the optional inputs B,
//! sequence_lens, initial_h, initial_c and the LSTM peepholes P; the attributes activations
//! (Sigmoid, Tanh, Relu; one list per direction, or one list shared by both), clip,
//! hidden_size, input_forget (LSTM), linear_before_reset (GRU) and layout (0: time-major, 1:
//! batch-first X, initial states and outputs). With sequence_lens a batch entry stops at its
//! length: Y is zero past it, Y_h/Y_c are its last valid step (zero for a length of 0, as ONNX
//! Runtime gives), and the reverse direction runs backwards from the entry's last valid step.
//! Other activations (which take activation_alpha/beta) are refused with an error naming them;
//! activation_alpha/beta are ignored, as none of the supported activations reads them.

use candle_core::{DType as CDType, Tensor};

use super::linear::matmul_bt;
use super::{c, check_output, like, select, Cx, Error, R};
use crate::value::Value;

/// Which recurrent operator.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lstm,
    Gru,
    Rnn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lstm => "LSTM",
            Kind::Gru => "GRU",
            Kind::Rnn => "RNN",
        }
    }

    /// Gate blocks stacked in W and R.
    fn gates(self) -> usize {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
            Kind::Rnn => 1,
        }
    }

    /// The activations of one direction, by default.
    fn default_activations(self) -> &'static [Act] {
        match self {
            Kind::Lstm => &[Act::Sigmoid, Act::Tanh, Act::Tanh],
            Kind::Gru => &[Act::Sigmoid, Act::Tanh],
            Kind::Rnn => &[Act::Tanh],
        }
    }
}

/// A gate activation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    Sigmoid,
    Tanh,
    Relu,
}

impl Act {
    fn parse(name: &str) -> R<Act> {
        // ONNX Runtime matches the names case-insensitively.
        match name.to_ascii_lowercase().as_str() {
            "sigmoid" => Ok(Act::Sigmoid),
            "tanh" => Ok(Act::Tanh),
            "relu" => Ok(Act::Relu),
            _ => Err(Error::Op(format!(
                "activation '{name}' is not supported (only Sigmoid, Tanh and Relu)"
            ))),
        }
    }

    fn apply(self, x: &Tensor) -> R<Tensor> {
        c(match self {
            Act::Sigmoid => x.neg().and_then(|t| t.exp()?.affine(1.0, 1.0)?.recip()),
            Act::Tanh => x.tanh(),
            Act::Relu => x.relu(),
        })
    }
}

pub fn lstm(cx: &Cx) -> R<Vec<Value>> {
    recurrent(cx, Kind::Lstm)
}

/// ONNX Runtime's DynamicQuantizeLSTM (com.microsoft), which zeropoint's dynamic quantization
/// writes: an LSTM whose W and R are integer codes, transposed (`[directions, input, 4·hidden]`,
/// `[directions, hidden, 4·hidden]`), with their scales and zero-points as inputs 8 to 11 (one
/// per direction, or one per gate row: `[directions, 4·hidden]`). ONNX Runtime rounds each
/// product's float operand to uint8 at run time, X once and H at every step, each on the grid
/// of its own range; so does this, as ONNX Runtime does on one thread (checked to 1e-6 in
/// tests/python/dynamic_reference.py). With more threads ONNX Runtime splits a batch of several
/// entries between them and rounds each part of H on its own grid, so its own results then
/// depend on its thread count.
pub fn dynamic_quantize_lstm(cx: &Cx) -> R<Vec<Value>> {
    let w = dequantized_weight(cx, 1, 8, "W")?;
    let r = dequantized_weight(cx, 2, 10, "R")?;
    run(cx, Kind::Lstm, w, r, true)
}

/// Codes input `i` (`[D, K, G]`) with scale input `si` and zero-point input `si + 1`, as the
/// float `[D, G, K]` weight an LSTM reads.
fn dequantized_weight(cx: &Cx, i: usize, si: usize, what: &str) -> R<Tensor> {
    let codes = cx.input(i)?;
    if codes.dtype.is_float() || codes.shape().len() != 3 {
        return Err(Error::Op(format!(
            "{what} is {} {:?}, expected integer codes of rank 3",
            codes.dtype,
            codes.shape()
        )));
    }
    let [d, _, g] = [codes.shape()[0], codes.shape()[1], codes.shape()[2]];
    let grid = |t: &Tensor, which: &str| -> R<Tensor> {
        match t.dims() {
            [n] if *n == d => c(t.reshape((d, 1, 1))),
            [n, m] if *n == d && *m == g => c(t.reshape((d, 1, g))),
            other => Err(Error::Op(format!(
                "{what}'s {which} has shape {other:?}, expected [{d}] or [{d}, {g}]"
            ))),
        }
    };
    let f32s = |t: &Tensor| c(t.to_dtype(CDType::F32));
    let scale = grid(&f32s(&cx.input(si)?.tensor)?, "scale")?;
    let mut w = f32s(&codes.tensor)?;
    if cx.opt(si + 1).is_some() {
        let zero = grid(&f32s(&cx.input(si + 1)?.tensor)?, "zero point")?;
        w = c(w.broadcast_sub(&zero))?;
    }
    c(w.broadcast_mul(&scale)?.transpose(1, 2)?.contiguous())
}

/// `t` rounded as ONNX Runtime's quantized recurrent kernels round a product's float operand:
/// per tensor to uint8, on the grid of the range of its first `rows` rows (the ones ONNX Runtime
/// computes) widened to hold 0 (scale 1 when all is 0).
fn round_to_u8_grid(t: &Tensor, rows: usize) -> R<Tensor> {
    let v: Vec<f32> = c(t.flatten_all()?.to_vec1())?;
    let seen = &v[..(rows * t.dims()[1]).min(v.len())];
    let lo = seen.iter().fold(0f32, |m, &x| m.min(x));
    let hi = seen.iter().fold(0f32, |m, &x| m.max(x));
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let zero = (-lo / scale).clamp(0.0, 255.0).round_ties_even();
    let rounded = v
        .iter()
        .map(|&x| (((x / scale).round_ties_even() + zero).clamp(0.0, 255.0) - zero) * scale)
        .collect();
    c(Tensor::from_vec(rounded, t.dims(), t.device()))
}

pub fn gru(cx: &Cx) -> R<Vec<Value>> {
    recurrent(cx, Kind::Gru)
}

pub fn rnn(cx: &Cx) -> R<Vec<Value>> {
    recurrent(cx, Kind::Rnn)
}

/// Float input `i` as f32, if given.
fn f32_input(cx: &Cx, i: usize) -> R<Option<Tensor>> {
    if cx.opt(i).is_none() {
        return Ok(None);
    }
    Ok(Some(c(cx.float(i)?.to_dtype(CDType::F32))?))
}

/// Refuses an operand whose shape is not `want`.
fn expect_shape(what: &str, t: &Tensor, want: &[usize]) -> R<()> {
    if t.dims() != want {
        return Err(Error::Op(format!(
            "{what} has shape {:?}, expected {want:?}",
            t.dims()
        )));
    }
    Ok(())
}

/// Everything one direction needs, fixed across steps.
struct Setup<'a> {
    kind: Kind,
    hidden: usize,
    seq: usize,
    batch: usize,
    /// X as [seq * batch, input], time-major.
    x: &'a Tensor,
    lens: Option<&'a [usize]>,
    clip: Option<f64>,
    input_forget: bool,
    linear_before_reset: bool,
    /// X and each step's H rounded to uint8 before their products (DynamicQuantizeLSTM).
    rounded: bool,
    /// Whether Y is an output: ONNX Runtime's kernels then read each step's H from Y, where an
    /// entry past its length is 0, which widens the grid H is rounded on.
    y_out: bool,
}

/// One direction's weights and starting state.
struct Direction {
    w: Tensor,
    r: Tensor,
    /// B split in its W and R halves, each [1, gates * hidden].
    wb: Option<Tensor>,
    rb: Option<Tensor>,
    /// LSTM peepholes i, o, f, each [1, hidden].
    p: Option<[Tensor; 3]>,
    h0: Tensor,
    c0: Option<Tensor>,
    acts: Vec<Act>,
    reverse: bool,
}

fn recurrent(cx: &Cx, kind: Kind) -> R<Vec<Value>> {
    let w = c(cx.float(1)?.to_dtype(CDType::F32))?;
    let r = c(cx.float(2)?.to_dtype(CDType::F32))?;
    run(cx, kind, w, r, false)
}

/// The operator with weights `w` and `r`; `rounded`: each product's float operand rounded as
/// ONNX Runtime's quantized kernels round it.
fn run(cx: &Cx, kind: Kind, w: Tensor, r: Tensor, rounded: bool) -> R<Vec<Value>> {
    let xv = cx.input(0)?;
    let mut x = c(cx.float(0)?.to_dtype(CDType::F32))?;
    let batch_first = batch_first(cx)?;
    let direction = cx.string("direction", "forward")?;
    let dirs = directions(&direction)?;
    let nd = dirs.len();

    if x.rank() != 3 {
        return Err(Error::Op(format!(
            "X has shape {:?}, expected rank 3",
            x.dims()
        )));
    }
    if batch_first {
        x = c(x.transpose(0, 1))?;
    }
    let (seq, batch, input) = c(x.dims3())?;
    let hidden = hidden_size(cx, kind, &w, &r, input, &direction)?;
    let gh = kind.gates() * hidden;
    check_output(&[seq * batch, gh], CDType::F32)?;
    check_output(&[seq, nd, batch, hidden], CDType::F32)?;

    let b = f32_input(cx, 3)?;
    if let Some(b) = &b {
        expect_shape("B", b, &[nd, 2 * gh])?;
    }
    let lens = sequence_lens(cx, batch, seq)?;
    let state = |i: usize, what: &str| initial_state(cx, i, what, batch_first, [nd, batch, hidden]);
    let h0 = state(5, "initial_h")?;
    let (c0, p) = if kind == Kind::Lstm {
        let p = f32_input(cx, 7)?;
        if let Some(p) = &p {
            expect_shape("P", p, &[nd, 3 * hidden])?;
        }
        (state(6, "initial_c")?, p)
    } else {
        (None, None)
    };

    let clip = clip_attribute(cx)?;
    let per_dir = kind.default_activations().len();
    let acts = activations(cx, kind, nd, &direction)?;

    let xs = c(x.contiguous()?.reshape((seq * batch, input)))?;
    let setup = Setup {
        kind,
        hidden,
        seq,
        batch,
        x: &xs,
        lens: lens.as_deref(),
        clip,
        input_forget: kind == Kind::Lstm && cx.int("input_forget", 0)? != 0,
        linear_before_reset: kind == Kind::Gru && cx.int("linear_before_reset", 0)? != 0,
        rounded,
        y_out: cx.node.outputs.first().is_some_and(|y| !y.is_empty()),
    };
    let zeros = || c(Tensor::zeros((batch, hidden), CDType::F32, x.device()));
    let mut ys = Vec::with_capacity(nd);
    let mut hs = Vec::with_capacity(nd);
    let mut cs = Vec::with_capacity(nd);
    for (d, &reverse) in dirs.iter().enumerate() {
        let row = |t: &Tensor, from: usize, len: usize| -> R<Tensor> {
            c(t.get(d)?.narrow(0, from, len)?.unsqueeze(0))
        };
        let dir = Direction {
            w: c(w.get(d))?,
            r: c(r.get(d))?,
            wb: b.as_ref().map(|b| row(b, 0, gh)).transpose()?,
            rb: b.as_ref().map(|b| row(b, gh, gh)).transpose()?,
            p: match &p {
                Some(p) => Some([
                    row(p, 0, hidden)?,
                    row(p, hidden, hidden)?,
                    row(p, 2 * hidden, hidden)?,
                ]),
                None => None,
            },
            h0: match &h0 {
                Some(h) => c(h.get(d))?,
                None => zeros()?,
            },
            c0: match (&c0, kind) {
                (Some(cc), _) => Some(c(cc.get(d))?),
                (None, Kind::Lstm) => Some(zeros()?),
                _ => None,
            },
            acts: acts[d * per_dir..(d + 1) * per_dir].to_vec(),
            reverse,
        };
        let (y, h, cc) = run_direction(&setup, &dir)?;
        ys.push(y);
        hs.push(h);
        cs.extend(cc);
    }

    outputs(xv, kind, batch_first, &ys, &hs, &cs)
}

/// Y, Y_h and (LSTM) Y_c from each direction's results, in X's float type and layout: Y is
/// [seq, num_directions, batch, hidden], or [batch, seq, num_directions, hidden] batch-first.
fn outputs(
    xv: &Value,
    kind: Kind,
    batch_first: bool,
    ys: &[Tensor],
    hs: &[Tensor],
    cs: &[Tensor],
) -> R<Vec<Value>> {
    let out =
        |t: Tensor| -> R<Value> { Ok(like(c(t.contiguous()?.to_dtype(xv.tensor.dtype()))?, xv)) };
    let y = super::stack(ys, 1)?;
    let y = if batch_first {
        c(y.permute((2, 0, 1, 3)))?
    } else {
        y
    };
    let state_out = |v: &[Tensor]| -> R<Value> {
        let t = super::stack(v, 0)?;
        out(if batch_first {
            c(t.transpose(0, 1))?
        } else {
            t
        })
    };
    let mut outs = vec![out(y)?, state_out(hs)?];
    if kind == Kind::Lstm {
        outs.push(state_out(cs)?);
    }
    Ok(outs)
}

/// The hidden size (the attribute, else R's), with W and R checked against it.
fn hidden_size(
    cx: &Cx,
    kind: Kind,
    w: &Tensor,
    r: &Tensor,
    input: usize,
    direction: &str,
) -> R<usize> {
    if w.rank() != 3 || r.rank() != 3 {
        return Err(Error::Op(format!(
            "W and R have shapes {:?} and {:?}, expected rank 3",
            w.dims(),
            r.dims()
        )));
    }
    let hidden = match cx.int("hidden_size", -1)? {
        -1 => r.dims()[2],
        h if h > 0 => h as usize,
        h => return Err(Error::Op(format!("hidden_size {h} is not positive"))),
    };
    let (nd, g) = (directions(direction)?.len(), kind.gates());
    let gh = g * hidden;
    if w.dims() != [nd, gh, input] {
        return Err(Error::Op(format!(
            "W has shape {:?}, expected [{nd}, {gh}, {input}] ({nd} direction(s) of {direction}, \
             {g} gate(s) of hidden_size {hidden}, input size {input})",
            w.dims()
        )));
    }
    expect_shape("R", r, &[nd, gh, hidden])?;
    Ok(hidden)
}

/// Optional input `i`, an initial state, as time-major [num_directions, batch, hidden]
/// (`dims`), whatever the layout.
fn initial_state(
    cx: &Cx,
    i: usize,
    what: &str,
    batch_first: bool,
    dims: [usize; 3],
) -> R<Option<Tensor>> {
    let Some(t) = f32_input(cx, i)? else {
        return Ok(None);
    };
    let [nd, batch, hidden] = dims;
    let want = if batch_first {
        [batch, nd, hidden]
    } else {
        dims
    };
    expect_shape(what, &t, &want)?;
    Ok(Some(if batch_first {
        c(t.transpose(0, 1)?.contiguous())?
    } else {
        t
    }))
}

/// Whether X, Y and the states are batch-first (layout 1) rather than time-major (0).
fn batch_first(cx: &Cx) -> R<bool> {
    match cx.int("layout", 0)? {
        0 => Ok(false),
        1 => Ok(true),
        l => Err(Error::Op(format!("layout {l} is not 0 or 1"))),
    }
}

/// The directions run, as "reversed?" flags.
fn directions(direction: &str) -> R<&'static [bool]> {
    match direction {
        "forward" => Ok(&[false]),
        "reverse" => Ok(&[true]),
        "bidirectional" => Ok(&[false, true]),
        d => Err(Error::Op(format!(
            "direction '{d}' is not forward, reverse or bidirectional"
        ))),
    }
}

/// The optional per-entry lengths, each within [0, seq].
fn sequence_lens(cx: &Cx, batch: usize, seq: usize) -> R<Option<Vec<usize>>> {
    let Some(l) = cx.ints_input(4)? else {
        return Ok(None);
    };
    if l.len() != batch {
        return Err(Error::Op(format!(
            "sequence_lens has {} values for a batch of {batch}",
            l.len()
        )));
    }
    if let Some(bad) = l.iter().find(|&&v| v < 0 || v > seq as i64) {
        return Err(Error::Op(format!(
            "sequence_lens value {bad} is outside [0, {seq}]"
        )));
    }
    Ok(Some(l.iter().map(|&v| v as usize).collect()))
}

/// The cell clip, when given: a positive bound on every gate's input.
fn clip_attribute(cx: &Cx) -> R<Option<f64>> {
    if cx.node.attribute("clip").is_none() {
        return Ok(None);
    }
    let v = cx.float_attr("clip", 0.0)?;
    if v.is_nan() || v <= 0.0 {
        return Err(Error::Op(format!("clip {v} is not positive")));
    }
    Ok(Some(v as f64))
}

/// The activations of every direction, in order: the attribute's, one list per direction or
/// one list for both (as ONNX Runtime accepts), else the defaults.
fn activations(cx: &Cx, kind: Kind, nd: usize, direction: &str) -> R<Vec<Act>> {
    let per_dir = kind.default_activations().len();
    let Some(a) = cx.node.attribute("activations") else {
        return Ok(kind.default_activations().repeat(nd));
    };
    let names: Vec<String> = a
        .strings
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let acts = names.iter().map(|n| Act::parse(n)).collect::<R<Vec<_>>>()?;
    if acts.len() == per_dir * nd {
        Ok(acts)
    } else if acts.len() == per_dir {
        Ok(acts.repeat(nd))
    } else {
        Err(Error::Op(format!(
            "{} {direction} takes {} activations, got {} ({})",
            kind.name(),
            per_dir * nd,
            acts.len(),
            names.join(", ")
        )))
    }
}

/// Every step's input projection at once, X (its rows in `order`) times Wᵀ plus Wb:
/// [seq * batch, gates * hidden].
fn input_projection(s: &Setup, d: &Direction, order: Option<&[i64]>) -> R<Tensor> {
    let x = match order {
        Some(o) => select(s.x, o, 0)?,
        None => s.x.clone(),
    };
    // ONNX Runtime computes the steps up to the longest entry only.
    let steps = s
        .lens
        .and_then(|l| l.iter().max().copied())
        .unwrap_or(s.seq);
    let x = if s.rounded {
        round_to_u8_grid(&x, steps * s.batch)?
    } else {
        x
    };
    let xw = matmul_bt(&x, &d.w)?;
    match &d.wb {
        Some(wb) => c(xw.broadcast_add(wb)),
        None => Ok(xw),
    }
}

/// Runs one direction over time: Y [seq, batch, hidden], the last hidden state and, for an
/// LSTM, the last cell state.
fn run_direction(s: &Setup, d: &Direction) -> R<(Tensor, Tensor, Option<Tensor>)> {
    let (seq, batch, hs) = (s.seq, s.batch, s.hidden);
    let dev = s.x.device();
    // Row order of the steps: a reverse direction reads each entry backwards from its last
    // valid step; the permutation is its own inverse, so it also puts Y back in time order.
    let order: Option<Vec<i64>> = d.reverse.then(|| {
        (0..seq)
            .flat_map(|t| {
                (0..batch).map(move |b| {
                    let len = s.lens.map_or(seq, |l| l[b]);
                    let src = if t < len { len - 1 - t } else { t };
                    (src * batch + b) as i64
                })
            })
            .collect()
    });
    let xw = input_projection(s, d, order.as_deref())?;
    // GRU's Rh alone, for (r ⊙ H)·Rhᵀ: rows of R, contiguous.
    let rh = match s.kind {
        Kind::Gru => Some(c(d.r.narrow(0, 2 * hs, hs))?),
        _ => None,
    };
    // 1 where step t is within an entry's length, as [batch, 1] per step.
    let masks: Option<Vec<Tensor>> = match s.lens {
        None => None,
        Some(l) => Some(
            (0..seq)
                .map(|t| {
                    let m: Vec<f32> = l.iter().map(|&n| f32::from(u8::from(t < n))).collect();
                    c(Tensor::from_vec(m, (batch, 1), dev))
                })
                .collect::<R<_>>()?,
        ),
    };
    let step = Step {
        s,
        d,
        rh: rh.as_ref(),
    };
    let mut h = d.h0.clone();
    let mut cell = d.c0.clone();
    let mut ys: Vec<Tensor> = Vec::with_capacity(seq);
    for t in 0..seq {
        let xt = c(xw.narrow(0, t * batch, batch))?;
        // What the step's product reads as H (only the rounding grid sees the difference: the
        // entries past their length, which it zeroes, are masked out anyway).
        let h_read = match ys.last() {
            Some(y) if s.rounded && s.y_out && masks.is_some() => y,
            _ => &h,
        };
        let (h_new, c_new) = match s.kind {
            Kind::Lstm => step.lstm(
                &xt,
                h_read,
                cell.as_ref().ok_or("LSTM without a cell state")?,
            )?,
            Kind::Gru => (step.gru(&xt, &h)?, None),
            Kind::Rnn => (step.rnn(&xt, &h)?, None),
        };
        match &masks {
            None => {
                ys.push(h_new.clone());
                h = h_new;
                cell = c_new;
            }
            Some(m) => {
                // Past an entry's length: no output, the state stays.
                let m = &m[t];
                ys.push(c(h_new.broadcast_mul(m))?);
                h = c(h.add(&h_new.sub(&h)?.broadcast_mul(m)?))?;
                cell = match (cell, c_new) {
                    (Some(cp), Some(cn)) => Some(c(cp.add(&cn.sub(&cp)?.broadcast_mul(m)?))?),
                    (cp, _) => cp,
                };
            }
        }
    }
    let mut y = if seq == 0 {
        c(Tensor::zeros((0, batch, hs), CDType::F32, dev))?
    } else {
        super::stack(&ys, 0)?
    };
    if let Some(o) = &order {
        y = c(select(&y.reshape((seq * batch, hs))?, o, 0)?.reshape((seq, batch, hs)))?;
    }
    // An entry of length 0 has no last step: ONNX Runtime gives zero states.
    if let Some(l) = s.lens.filter(|l| l.contains(&0)) {
        let m: Vec<f32> = l.iter().map(|&n| f32::from(u8::from(n > 0))).collect();
        let m = c(Tensor::from_vec(m, (batch, 1), dev))?;
        h = c(h.broadcast_mul(&m))?;
        cell = cell.map(|cp| c(cp.broadcast_mul(&m))).transpose()?;
    }
    Ok((y, h, cell))
}

/// One time step of a direction, the gates as the specification writes them. The products
/// read R [gates * hidden, hidden] in place (`linear`): a transposed copy of R on every run
/// was a third of a CRNN's run.
struct Step<'a> {
    s: &'a Setup<'a>,
    d: &'a Direction,
    /// GRU's Rh alone, [hidden, hidden], for (r ⊙ H)·Rhᵀ.
    rh: Option<&'a Tensor>,
}

impl Step<'_> {
    fn clip(&self, t: Tensor) -> R<Tensor> {
        match self.s.clip {
            Some(v) => c(t.clamp(-v, v)),
            None => Ok(t),
        }
    }

    /// Gate block `k` of a [batch, gates * hidden] tensor.
    fn gate(&self, t: &Tensor, k: usize) -> R<Tensor> {
        c(t.narrow(1, k * self.s.hidden, self.s.hidden))
    }

    /// x·Wᵀ + Wb (precomputed) + H·Rᵀ + Rb.
    fn pre(&self, xt: &Tensor, h: &Tensor) -> R<Tensor> {
        let h = if self.s.rounded {
            &round_to_u8_grid(h, h.dims()[0])?
        } else {
            h
        };
        let mut pre = c(xt.add(&matmul_bt(h, &self.d.r)?))?;
        if let Some(rb) = &self.d.rb {
            pre = c(pre.broadcast_add(rb))?;
        }
        Ok(pre)
    }

    /// LSTM (gates iofc, peepholes on i and f from C_{t-1}, on o from C_t): (H_t, C_t).
    fn lstm(&self, xt: &Tensor, h: &Tensor, cp: &Tensor) -> R<(Tensor, Option<Tensor>)> {
        let pre = self.pre(xt, h)?;
        let peep = |g: Tensor, k: usize, state: &Tensor| -> R<Tensor> {
            match &self.d.p {
                Some(p) => c(g.add(&state.broadcast_mul(&p[k])?)),
                None => Ok(g),
            }
        };
        let (f, g, hact) = (self.d.acts[0], self.d.acts[1], self.d.acts[2]);
        let i = f.apply(&self.clip(peep(self.gate(&pre, 0)?, 0, cp)?)?)?;
        let fg = if self.s.input_forget {
            c(i.ones_like()?.sub(&i))?
        } else {
            f.apply(&self.clip(peep(self.gate(&pre, 2)?, 2, cp)?)?)?
        };
        let cand = g.apply(&self.clip(self.gate(&pre, 3)?)?)?;
        let c_new = c(fg.mul(cp)?.add(&i.mul(&cand)?))?;
        let o = f.apply(&self.clip(peep(self.gate(&pre, 1)?, 1, &c_new)?)?)?;
        Ok((c(o.mul(&hact.apply(&c_new)?))?, Some(c_new)))
    }

    /// GRU (gates zrh, linear_before_reset choosing where the reset gate applies): H_t.
    fn gru(&self, xt: &Tensor, h: &Tensor) -> R<Tensor> {
        let d = self.d;
        let mut hr = matmul_bt(h, &d.r)?;
        if let Some(rb) = &d.rb {
            hr = c(hr.broadcast_add(rb))?;
        }
        let (f, g) = (d.acts[0], d.acts[1]);
        let gate_sum = |k: usize| -> R<Tensor> { c(self.gate(xt, k)?.add(&self.gate(&hr, k)?)) };
        let z = f.apply(&self.clip(gate_sum(0)?)?)?;
        let rg = f.apply(&self.clip(gate_sum(1)?)?)?;
        let rec = if self.s.linear_before_reset {
            // r ⊙ (H·Rhᵀ + Rbh)
            c(rg.mul(&self.gate(&hr, 2)?))?
        } else {
            // (r ⊙ H)·Rhᵀ + Rbh
            let rh = self.rh.ok_or("GRU without Rh")?;
            let mut v = matmul_bt(&c(rg.mul(h))?, rh)?;
            if let Some(rb) = &d.rb {
                v = c(v.broadcast_add(&self.gate(rb, 2)?))?;
            }
            v
        };
        let cand = g.apply(&self.clip(c(self.gate(xt, 2)?.add(&rec))?)?)?;
        // (1 − z) ⊙ h̃ + z ⊙ H = h̃ + z ⊙ (H − h̃)
        c(cand.add(&z.mul(&h.sub(&cand)?)?))
    }

    /// RNN: H_t = f(x·Wᵀ + H·Rᵀ + b).
    fn rnn(&self, xt: &Tensor, h: &Tensor) -> R<Tensor> {
        self.d.acts[0].apply(&self.clip(self.pre(xt, h)?)?)
    }
}

#[cfg(test)]
mod tests {
    //! ONNX Runtime's CPU kernels refuse layout=1, so tests/python/op_cases.py cannot cover it:
    //! here a batch-first run must equal the time-major one on transposed operands. The refusals
    //! are checked here too.

    use candle_core::Tensor;
    use zeropoint_graph::{Node, Op};
    use zeropoint_onnx::proto::attribute_proto::AttributeType;
    use zeropoint_onnx::proto::AttributeProto;
    use zeropoint_onnx::DType;

    use super::super::{run, Cx};
    use crate::value::Value;

    fn attr(name: &str, ty: AttributeType) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(ty as i32),
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            i: Some(v),
            ..attr(name, AttributeType::Int)
        }
    }

    fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            s: Some(v.as_bytes().to_vec()),
            ..attr(name, AttributeType::String)
        }
    }

    fn strings(name: &str, v: &[&str]) -> AttributeProto {
        AttributeProto {
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..attr(name, AttributeType::Strings)
        }
    }

    /// Deterministic values in [-1, 1).
    fn data(shape: &[usize], seed: usize) -> Value {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| (((i * 37 + seed * 101) % 97) as f32 / 48.5) - 1.0)
            .collect();
        Value::from_f32_vec(v, shape).unwrap()
    }

    fn exec(
        op: Op,
        attrs: Vec<AttributeProto>,
        inputs: Vec<Option<Value>>,
    ) -> Result<Vec<Value>, String> {
        let names: Vec<String> = (0..inputs.len()).map(|i| format!("in{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut node = Node::new("rnn", op, &names, &["y", "yh", "yc"]);
        node.attributes = attrs;
        let cx = Cx {
            node: &node,
            inputs: &inputs,
            opset: 14,
        };
        run(&cx).map_err(|e| e.to_string())
    }

    fn transposed(v: &Value, a: usize, b: usize) -> Value {
        Value::f32(v.tensor.transpose(a, b).unwrap().contiguous().unwrap())
    }

    fn assert_close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "max difference {d}");
    }

    /// The operands of a bidirectional `op` (seq 5, batch 3, input 2, hidden 4), time-major.
    fn operands(op: &Op) -> Vec<Option<Value>> {
        let (g, lstm) = match op {
            Op::LSTM => (4, true),
            Op::GRU => (3, false),
            _ => (1, false),
        };
        let lens = Value::from_ints(vec![5, 2, 0], &[3], DType::I32).unwrap();
        let mut v = vec![
            Some(data(&[5, 3, 2], 1)),
            Some(data(&[2, g * 4, 2], 2)),
            Some(data(&[2, g * 4, 4], 3)),
            Some(data(&[2, 2 * g * 4], 4)),
            Some(lens),
            Some(data(&[2, 3, 4], 5)),
        ];
        if lstm {
            v.push(Some(data(&[2, 3, 4], 6)));
            v.push(Some(data(&[2, 12], 7)));
        }
        v
    }

    #[test]
    fn batch_first_layout_equals_time_major() {
        for op in [Op::LSTM, Op::GRU, Op::RNN] {
            let mut attrs = vec![string("direction", "bidirectional"), int("hidden_size", 4)];
            if op == Op::GRU {
                attrs.push(int("linear_before_reset", 1));
            }
            let seq = operands(&op);
            let want = exec(op.clone(), attrs.clone(), seq.clone()).unwrap();
            let mut batch = seq;
            for i in [0, 5, 6] {
                if let Some(Some(v)) = batch.get(i) {
                    batch[i] = Some(transposed(v, 0, 1));
                }
            }
            attrs.push(int("layout", 1));
            let got = exec(op.clone(), attrs, batch).unwrap();
            assert_eq!(got.len(), want.len(), "{op}");
            // Y: [seq, dirs, batch, hidden] -> [batch, seq, dirs, hidden].
            let y = want[0].tensor.permute((2, 0, 1, 3)).unwrap();
            assert_close(&got[0].tensor, &y);
            for (g, w) in got.iter().zip(&want).skip(1) {
                assert_close(&g.tensor, &w.tensor.transpose(0, 1).unwrap());
            }
        }
    }

    /// A batch of no sequences runs to outputs of no rows. It panicked in the LSTM's [out, in]
    /// product, on a state view of no elements past its empty storage (found by the
    /// graph_mutations fuzzer; ONNX Runtime 1.32 aborts the process on this input).
    #[test]
    fn an_empty_batch_gives_empty_outputs() {
        for op in [Op::LSTM, Op::GRU, Op::RNN] {
            let g = match op {
                Op::LSTM => 4,
                Op::GRU => 3,
                _ => 1,
            };
            let attrs = vec![int("hidden_size", 5)];
            let inputs = vec![
                Some(data(&[3, 0, 4], 1)),
                Some(data(&[1, g * 5, 4], 2)),
                Some(data(&[1, g * 5, 5], 3)),
            ];
            let out = exec(op.clone(), attrs, inputs).unwrap();
            assert_eq!(out[0].shape(), [3, 1, 0, 5], "{op}");
            assert_eq!(out[1].shape(), [1, 0, 5], "{op}");
        }
    }

    /// A change to the operands of [`operands`].
    type Edit = Box<dyn Fn(&mut Vec<Option<Value>>)>;

    #[test]
    fn bad_operands_are_refused_in_one_line() {
        let bidir = || vec![string("direction", "bidirectional"), int("hidden_size", 4)];
        let cases: Vec<(Op, Vec<AttributeProto>, Edit, &str)> = vec![
            (
                Op::LSTM,
                vec![int("hidden_size", 4)],
                Box::new(|_| {}),
                "W has shape [2, 16, 2], expected [1, 16, 2]",
            ),
            (
                Op::GRU,
                vec![string("direction", "bidirectional"), int("hidden_size", 5)],
                Box::new(|_| {}),
                "expected [2, 15, 2]",
            ),
            (
                Op::RNN,
                bidir(),
                Box::new(|v| {
                    v[4] = Some(Value::from_ints(vec![5, 6, 1], &[3], DType::I32).unwrap())
                }),
                "sequence_lens value 6 is outside [0, 5]",
            ),
            (
                Op::RNN,
                bidir(),
                Box::new(|v| v[4] = Some(Value::from_ints(vec![5, 1], &[2], DType::I32).unwrap())),
                "sequence_lens has 2 values for a batch of 3",
            ),
            (
                Op::LSTM,
                vec![
                    string("direction", "bidirectional"),
                    strings("activations", &["Sigmoid", "Affine", "Tanh"]),
                ],
                Box::new(|_| {}),
                "activation 'Affine' is not supported",
            ),
            (
                Op::GRU,
                vec![
                    string("direction", "bidirectional"),
                    strings("activations", &["Sigmoid", "Tanh", "Tanh"]),
                ],
                Box::new(|_| {}),
                "GRU bidirectional takes 4 activations, got 3",
            ),
            (
                Op::LSTM,
                bidir(),
                Box::new(|v| v[5] = Some(data(&[2, 2, 4], 9))),
                "initial_h has shape [2, 2, 4], expected [2, 3, 4]",
            ),
            (
                Op::LSTM,
                vec![string("direction", "sideways")],
                Box::new(|_| {}),
                "direction 'sideways'",
            ),
        ];
        for (op, attrs, edit, want) in cases {
            let mut inputs = operands(&op);
            edit(&mut inputs);
            let e = exec(op.clone(), attrs, inputs).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{op}: {e}");
        }
    }

    /// Found by fuzzing: a GRU of hidden size 0 stacked empty, strided tensors (a candle panic).
    #[test]
    fn empty_states_stack_to_empty_outputs() {
        let dev = &candle_core::Device::Cpu;
        let t = Tensor::zeros((3, 0), candle_core::DType::F32, dev)
            .unwrap()
            .t()
            .unwrap();
        let y = crate::ops::stack(&[t.clone(), t], 1).unwrap();
        assert_eq!(y.dims(), [0, 2, 3]);
        let rows = Tensor::zeros((4, 0), candle_core::DType::F32, dev).unwrap();
        let picked = crate::ops::select(&rows, &[3, 1], 0).unwrap();
        assert_eq!(picked.dims(), [2, 0]);
        let none = Tensor::zeros((0, 2), candle_core::DType::F32, dev).unwrap();
        assert!(crate::ops::select(&none, &[0], 0).is_err());
    }
}
