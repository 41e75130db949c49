//! An observer's state as bytes and back: what Python pickles and what a worker sends to the one
//! that merges. The format is little-endian and versioned:
//!
//! ```text
//! "ZPOB" version:u8
//! config:  method tag:u8, its parameters (f32/f64/u64), axis (u8 flag + u64), bins:u64, rows:u64
//! states:  count:u64, then per state a tag:u8 and its fields
//!          0 min-max      min:f32 max:f32
//!          1 average      min:f32 max:f32 batches:u64
//!          2 histogram    exp (u8 flag + i32) min:f32 max:f32 counts:u64 × bins
//!          3 rows         min:f32 max:f32 rows:u64, per row len:u64 and f32 bits
//! ```
//!
//! Reading checks everything an observer relies on (the configuration as [`Observer::new`] does,
//! one state kind per method, bin counts that add up, bounded sizes), so that bytes from anywhere
//! give an error, never a panic or an observer that misbehaves later.

use super::histogram::Histogram;
use super::reservoir::Reservoir;
use super::{Config, Method, Observer, State};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"ZPOB";
const VERSION: u8 = 1;

impl Observer {
    /// The observer (configuration and everything observed) as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        write_config(&mut w, &self.config);
        put_u64(&mut w, self.states.len());
        for s in &self.states {
            write_state(&mut w, s);
        }
        w
    }

    /// The observer [`to_bytes`](Observer::to_bytes) wrote, checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Observer> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(bad("not an observer state (no ZPOB header)"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(bad(&format!(
                "version {version} is not the one this build reads ({VERSION})"
            )));
        }
        let mut observer = Observer::new(read_config(&mut r)?)?;
        let n = r.len(1)?;
        for _ in 0..n {
            let state = read_state(&mut r, &observer.config)?;
            if std::mem::discriminant(&state) != std::mem::discriminant(&observer.fresh_state()) {
                return Err(bad("a state does not match the observer's method"));
            }
            observer.states.push(state);
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes after the last state"));
        }
        Ok(observer)
    }
}

fn bad(what: &str) -> Error {
    Error::Scheme(format!("observer state: {what}"))
}

fn put_u64(w: &mut Vec<u8>, v: usize) {
    w.extend_from_slice(&(v as u64).to_le_bytes());
}

fn put_f32(w: &mut Vec<u8>, v: f32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn write_config(w: &mut Vec<u8>, c: &Config) {
    match c.method {
        Method::MinMax => w.push(0),
        Method::MovingAverage { momentum } => {
            w.push(1);
            put_f32(w, momentum);
        }
        Method::Percentile { lower, upper } => {
            w.push(2);
            w.extend_from_slice(&lower.to_le_bytes());
            w.extend_from_slice(&upper.to_le_bytes());
        }
        Method::AbsPercentile { p } => {
            w.push(3);
            w.extend_from_slice(&p.to_le_bytes());
        }
        Method::Mse { norm } => {
            w.push(4);
            w.extend_from_slice(&norm.to_le_bytes());
        }
        Method::Entropy {
            bins,
            quantized_bins,
        } => {
            w.push(5);
            put_u64(w, bins);
            put_u64(w, quantized_bins);
        }
        Method::CrossEntropy => w.push(6),
    }
    w.push(u8::from(c.axis.is_some()));
    put_u64(w, c.axis.unwrap_or(0));
    put_u64(w, c.bins);
    put_u64(w, c.rows);
}

fn read_config(r: &mut Reader) -> Result<Config> {
    let method = match r.u8()? {
        0 => Method::MinMax,
        1 => Method::MovingAverage { momentum: r.f32()? },
        2 => Method::Percentile {
            lower: r.f64()?,
            upper: r.f64()?,
        },
        3 => Method::AbsPercentile { p: r.f64()? },
        4 => {
            let norm = r.f64()?;
            if !(norm.is_finite() && norm > 0.0) {
                return Err(bad(&format!("MSE norm {norm} is not a positive number")));
            }
            Method::Mse { norm }
        }
        5 => Method::Entropy {
            bins: r.len(1)?,
            quantized_bins: r.len(1)?,
        },
        6 => Method::CrossEntropy,
        t => return Err(bad(&format!("unknown method tag {t}"))),
    };
    let has_axis = r.u8()? != 0;
    let axis = r.len(1)?;
    Ok(Config {
        method,
        axis: has_axis.then_some(axis),
        bins: r.len(8)?,
        rows: r.len(1)?,
    })
}

fn write_state(w: &mut Vec<u8>, s: &State) {
    match s {
        State::MinMax { min, max } => {
            w.push(0);
            put_f32(w, *min);
            put_f32(w, *max);
        }
        State::Average { min, max, batches } => {
            w.push(1);
            put_f32(w, *min);
            put_f32(w, *max);
            w.extend_from_slice(&batches.to_le_bytes());
        }
        State::Histogram(h) => {
            w.push(2);
            let (exp, min, max) = h.parts();
            w.push(u8::from(exp.is_some()));
            w.extend_from_slice(&exp.unwrap_or(0).to_le_bytes());
            put_f32(w, min);
            put_f32(w, max);
            for c in h.counts() {
                w.extend_from_slice(&c.to_le_bytes());
            }
        }
        State::Rows(rows) => {
            w.push(3);
            let (min, max) = rows.extremes();
            put_f32(w, min);
            put_f32(w, max);
            let kept = rows.rows();
            put_u64(w, kept.len());
            for row in kept {
                put_u64(w, row.len());
                row.iter().for_each(|&v| put_f32(w, v));
            }
        }
    }
}

fn read_state(r: &mut Reader, config: &Config) -> Result<State> {
    Ok(match r.u8()? {
        0 => State::MinMax {
            min: r.f32()?,
            max: r.f32()?,
        },
        1 => State::Average {
            min: r.f32()?,
            max: r.f32()?,
            batches: r.u64()?,
        },
        2 => {
            let has_exp = r.u8()? != 0;
            let exp = i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
            let (min, max) = (r.f32()?, r.f32()?);
            let mut counts = Vec::with_capacity(config.bins.min(r.remaining() / 8));
            for _ in 0..config.bins {
                counts.push(r.u64()?);
            }
            State::Histogram(
                Histogram::from_parts(counts, has_exp.then_some(exp), min, max)
                    .map_err(|e| bad(&e))?,
            )
        }
        3 => {
            let (min, max) = (r.f32()?, r.f32()?);
            let n = r.len(8)?;
            if n > config.rows {
                return Err(bad(&format!(
                    "{n} rows kept by a reservoir of {}",
                    config.rows
                )));
            }
            let mut rows = Reservoir::new(config.rows);
            for _ in 0..n {
                let len = r.len(4)?;
                let row = (0..len).map(|_| r.f32()).collect::<Result<Vec<f32>>>()?;
                rows.update(&row, len.max(1));
            }
            rows.set_extremes(min, max);
            State::Rows(rows)
        }
        t => return Err(bad(&format!("unknown state tag {t}"))),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.remaining() {
            return Err(bad("truncated"));
        }
        self.at += n;
        Ok(&self.bytes[self.at - n..self.at])
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count of items of at least `item` bytes each that the remaining bytes could hold, so
    /// that a corrupt count cannot ask for a huge allocation.
    fn len(&mut self, item: usize) -> Result<usize> {
        let n = self.u64()?;
        if n > (self.remaining() / item.max(1)) as u64 && n > (1 << 20) {
            return Err(bad(&format!("count {n} exceeds the data")));
        }
        Ok(n as usize)
    }

    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scheme;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 100.0 - 7.0)
            .collect()
    }

    #[test]
    fn every_method_round_trips_and_keeps_estimating() {
        let scheme = Scheme::asymmetric_unsigned(8);
        for name in [
            "minmax",
            "ema",
            "percentile",
            "abs-percentile",
            "mse",
            "entropy",
            "cross-entropy",
        ] {
            for axis in [None, Some(1)] {
                let mut config = Config::new(Method::parse(name).unwrap()).bins(2048);
                if axis.is_some() && name == "cross-entropy" {
                    continue;
                }
                config.axis = axis;
                config.rows = 16;
                let mut a = Observer::new(config).unwrap();
                a.update(&data(600, 1), &[20, 30]).unwrap();
                let mut b = Observer::from_bytes(&a.to_bytes()).unwrap();
                assert_eq!(a, b, "{name} {axis:?}");
                // The restored observer goes on exactly as the original.
                a.update(&data(600, 2), &[20, 30]).unwrap();
                b.update(&data(600, 2), &[20, 30]).unwrap();
                assert_eq!(a.ranges(&scheme).unwrap(), b.ranges(&scheme).unwrap());
            }
        }
    }

    #[test]
    fn damaged_bytes_are_refused_without_panic() {
        let mut o = Observer::new(Config::new(Method::parse("mse").unwrap()).bins(64)).unwrap();
        o.update(&data(100, 3), &[100]).unwrap();
        let bytes = o.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Observer::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                // Either refused or a valid observer that can estimate (no panic either way).
                if let Ok(o) = Observer::from_bytes(&b) {
                    let _ = o.ranges(&Scheme::new(8));
                }
            }
        }
        // A min-max observer whose state claims to be a moving average's.
        let mut m = Observer::new(Config::new(Method::MinMax)).unwrap();
        m.update(&data(100, 3), &[100]).unwrap();
        let mut wrong = m.to_bytes();
        let tag = wrong.len() - 8 - 1;
        assert_eq!(wrong[tag], 0);
        wrong[tag] = 1;
        wrong.extend_from_slice(&1u64.to_le_bytes());
        let e = Observer::from_bytes(&wrong).unwrap_err().to_string();
        assert!(e.contains("does not match the observer's method"), "{e}");
    }
}
