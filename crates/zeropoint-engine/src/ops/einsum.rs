//! Einsum, by reduction to batched matrix products: each pair of operands is permuted to
//! [batch, free, contracted] × [batch, contracted, free], multiplied, and permuted to the
//! requested order. Covers the cases transformer exports use (attention scores and contexts,
//! projections, transposes, traces over a shared index, `...` broadcasting); repeated indices
//! within one operand (diagonals) are refused.

use candle_core::Tensor;

use super::matmul::matmul_nd;
use super::{c, check_output, like, one, Cx, Error, R};
use crate::value::Value;

pub fn einsum(cx: &Cx) -> R<Vec<Value>> {
    let eq = cx.string("equation", "")?.replace(' ', "");
    let ops: Vec<&Value> = cx.inputs.iter().flatten().collect();
    let first = *ops.first().ok_or("no operands")?;
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Term> = lhs.split(',').map(parse_term).collect::<R<_>>()?;
    if terms.len() != ops.len() {
        return Err(Error::Op(format!(
            "equation '{eq}' has {} operands, got {}",
            terms.len(),
            ops.len()
        )));
    }
    // Ellipsis dims of each operand, right-aligned against the widest (numpy broadcasting).
    let mut ell = Vec::new();
    for (t, v) in terms.iter().zip(&ops) {
        let named = t.iter().flatten().count();
        let rank = v.shape().len();
        let e = rank
            .checked_sub(named)
            .filter(|&e| e == 0 || t.contains(&None));
        ell.push(
            e.ok_or_else(|| format!("term of '{eq}' does not fit an operand of rank {rank}"))?,
        );
    }
    let wide = ell.iter().copied().max().unwrap_or(0);
    let labels: Vec<Vec<char>> = terms
        .iter()
        .zip(&ell)
        .map(|(t, &e)| expand(t, e, wide))
        .collect();
    let output: Vec<char> = match rhs {
        Some(r) => expand(&parse_term(r)?, wide, wide),
        None => {
            let all: Vec<char> = labels.iter().flatten().copied().collect();
            let mut once: Vec<char> = all
                .iter()
                .copied()
                .filter(|ch| !is_ell(*ch) && all.iter().filter(|x| *x == ch).count() == 1)
                .collect();
            once.sort_unstable();
            ellipsis_labels(wide).into_iter().chain(once).collect()
        }
    };
    let mut acc = (ops[0].tensor.clone(), labels[0].clone());
    for i in 1..ops.len() {
        // Keep the labels later operands or the output still need.
        let later: Vec<char> = labels[i + 1..]
            .iter()
            .flatten()
            .chain(&output)
            .copied()
            .collect();
        acc = pair(&acc.0, &acc.1, &ops[i].tensor, &labels[i], &later)?;
    }
    let (t, l) = reduce_to(&acc.0, &acc.1, &output)?;
    let perm: Vec<usize> = output
        .iter()
        .map(|ch| {
            l.iter()
                .position(|x| x == ch)
                .ok_or_else(|| Error::Op(format!("output index '{ch}' is not in any operand")))
        })
        .collect::<R<_>>()?;
    one(like(c(t.permute(perm)?.contiguous())?, first))
}

/// A term's indices; None marks `...`.
type Term = Vec<Option<char>>;

fn parse_term(term: &str) -> R<Term> {
    let t: Term = term
        .replace("...", ".")
        .chars()
        .map(|ch| (ch != '.').then_some(ch))
        .collect();
    if t.iter().flatten().any(|ch| !ch.is_ascii_alphabetic())
        || t.iter().filter(|x| x.is_none()).count() > 1
    {
        return Err(Error::Op(format!(
            "term '{term}' is not letters with at most one '...'"
        )));
    }
    Ok(t)
}

/// A term's labels with its `e` ellipsis dims named as the last `e` of `wide` shared labels.
fn expand(term: &Term, e: usize, wide: usize) -> Vec<char> {
    term.iter()
        .flat_map(|x| match x {
            Some(ch) => vec![*ch],
            None => ellipsis_labels(wide)[wide - e..].to_vec(),
        })
        .collect()
}

/// Labels for ellipsis dims: Greek letters, which cannot clash with the ASCII ones.
fn ellipsis_labels(n: usize) -> Vec<char> {
    (0..n)
        .map(|i| char::from_u32(0x3b1 + i as u32).unwrap())
        .collect()
}

fn is_ell(ch: char) -> bool {
    !ch.is_ascii()
}

/// Sums out the labels of `t` not in `keep`.
fn reduce_to(t: &Tensor, labels: &[char], keep: &[char]) -> R<(Tensor, Vec<char>)> {
    let mut t = t.clone();
    let mut l = labels.to_vec();
    for i in (0..l.len()).rev() {
        if l[..i].contains(&l[i]) {
            return Err(Error::Op(format!(
                "repeated index '{}' in one operand (diagonal) is not supported",
                l[i]
            )));
        }
        if !keep.contains(&l[i]) {
            t = c(t.sum(i))?;
            l.remove(i);
        }
    }
    Ok((t, l))
}

/// Contracts two operands, keeping the labels in `keep`.
fn pair(a: &Tensor, la: &[char], b: &Tensor, lb: &[char], keep: &[char]) -> R<(Tensor, Vec<char>)> {
    let keep_a: Vec<char> = keep.iter().chain(lb).copied().collect();
    let keep_b: Vec<char> = keep.iter().chain(la).copied().collect();
    let (a, la) = reduce_to(a, la, &keep_a)?;
    let (b, lb) = reduce_to(b, lb, &keep_b)?;
    let batch: Vec<char> = la
        .iter()
        .copied()
        .filter(|x| lb.contains(x) && keep.contains(x))
        .collect();
    let contract: Vec<char> = la
        .iter()
        .copied()
        .filter(|x| lb.contains(x) && !keep.contains(x))
        .collect();
    let left: Vec<char> = la.iter().copied().filter(|x| !lb.contains(x)).collect();
    let right: Vec<char> = lb.iter().copied().filter(|x| !la.contains(x)).collect();
    let size =
        |t: &Tensor, l: &[char], ch: char| t.dims()[l.iter().position(|&x| x == ch).unwrap()];
    let batch_dims: Vec<usize> = batch
        .iter()
        .map(|&ch| size(&a, &la, ch).max(size(&b, &lb, ch)))
        .collect();
    let arrange = |t: &Tensor, l: &[char], order: &[&[char]]| -> R<Tensor> {
        let perm: Vec<usize> = order
            .iter()
            .flat_map(|g| g.iter())
            .map(|ch| l.iter().position(|x| x == ch).unwrap())
            .collect();
        let t = c(t.permute(perm))?;
        // Broadcast batch dims of size 1 (from '...').
        let mut target = t.dims().to_vec();
        target[..batch_dims.len()].copy_from_slice(&batch_dims);
        c(t.broadcast_as(target)?.contiguous())
    };
    let nb: usize = batch_dims.iter().product();
    let prod = |t: &Tensor, l: &[char], g: &[char]| -> usize {
        g.iter().map(|&ch| size(t, l, ch)).product()
    };
    let (m, k, n) = (
        prod(&a, &la, &left),
        prod(&a, &la, &contract),
        prod(&b, &lb, &right),
    );
    // Broadcasting the batch dimensions may outgrow either operand.
    check_output(&[nb, m, k], a.dtype())?;
    check_output(&[nb, k, n], b.dtype())?;
    let at = arrange(&a, &la, &[&batch, &left, &contract])?;
    let bt = arrange(&b, &lb, &[&batch, &contract, &right])?;
    let y = matmul_nd(&c(at.reshape((nb, m, k)))?, &c(bt.reshape((nb, k, n)))?)?;
    let mut shape = batch_dims.clone();
    shape.extend(left.iter().map(|&ch| size(&a, &la, ch)));
    shape.extend(right.iter().map(|&ch| size(&b, &lb, ch)));
    let labels: Vec<char> = batch.iter().chain(&left).chain(&right).copied().collect();
    Ok((c(y.reshape(shape))?, labels))
}
