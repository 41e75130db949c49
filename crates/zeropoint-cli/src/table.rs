//! Plain-text tables with aligned columns: numbers right-aligned, text left-aligned.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(header: &[S]) -> Table {
        Table {
            header: header.iter().map(|h| h.as_ref().to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let numeric =
            |s: &str| s.parse::<f64>().is_ok() || s == "-" || s == "inf" || s.ends_with('%');
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&width)
                .enumerate()
                .map(|(i, (cell, &w))| {
                    if i > 0 && numeric(cell) {
                        format!("{cell:>w$}")
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// A number in at most `sig` significant digits, without needless exponents.
pub fn num(v: f64, sig: usize) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&mag) {
        return format!("{v:.prec$e}", prec = sig.saturating_sub(1));
    }
    let decimals = (sig as i32 - 1 - mag).max(0) as usize;
    format!("{v:.decimals$}")
}

/// dB with one decimal.
pub fn db(v: f64) -> String {
    if v.is_infinite() && v > 0.0 {
        "inf".into()
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_compact() {
        assert_eq!(num(0.0156862754, 4), "0.01569");
        assert_eq!(num(255.0, 4), "255.0");
        assert_eq!(num(1.5e-7, 3), "1.50e-7");
        assert_eq!(num(-2.0, 3), "-2.00");
        assert_eq!(db(f64::INFINITY), "inf");
    }

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["name", "value"]);
        t.row(vec!["a".into(), "1.5".into()]);
        t.row(vec!["long".into(), "10.25".into()]);
        assert_eq!(t.render(), "name  value\na       1.5\nlong  10.25\n");
    }
}
