//! Samples, their summary (median, min, max) and the Markdown tables of the report.

use std::fmt::Write as _;

/// The unit a row's samples are in; decides how they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Seconds,
    MegaBytes,
    Count,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Millis => format!("{v:.1} ms"),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::MegaBytes => format!("{v:.2} MB"),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// Measurements of one figure for one side.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Median (mean of the two middle values for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max, n=N)` in `unit`, or `—` when there is nothing.
    fn cell(&self, unit: Unit) -> String {
        if self.is_empty() {
            return "—".into();
        }
        if self.0.len() == 1 {
            return unit.format(self.median());
        }
        format!(
            "{} ({}–{}, n={})",
            unit.format(self.median()),
            unit.format(self.min()),
            unit.format(self.max()),
            self.0.len()
        )
    }
}

/// One figure measured on both sides: containerd (with its Go shim) and corral.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub unit: Unit,
    pub containerd: Samples,
    pub corral: Samples,
    /// Highest acceptable corral/containerd ratio of the medians, if the issue sets a target.
    pub target: Option<f64>,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: Unit, target: Option<f64>) -> Row {
        Row {
            figure: figure.into(),
            unit,
            containerd: Samples::default(),
            corral: Samples::default(),
            target,
        }
    }

    /// corral/containerd ratio of the medians.
    pub fn ratio(&self) -> Option<f64> {
        let (a, b) = (self.containerd.median(), self.corral.median());
        (a.is_finite() && b.is_finite() && a > 0.0).then(|| b / a)
    }

    fn verdict(&self) -> String {
        match (self.target, self.ratio()) {
            (Some(t), Some(r)) if r <= t => format!("≤ {t:.2}x: met"),
            (Some(t), Some(_)) => format!("≤ {t:.2}x: **missed**"),
            (Some(t), None) => format!("≤ {t:.2}x"),
            (None, _) => String::new(),
        }
    }
}

/// A measurement without a counterpart on the other side (the runc floor).
#[derive(Clone, Debug)]
pub struct Single {
    pub figure: String,
    pub unit: Unit,
    pub samples: Samples,
}

/// The Markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    table_with(rows, "containerd + runc-v2 shim", "corrald + corral shim")
}

/// The Markdown table of `rows`, with `containerd` and `corral` as the two columns' headers.
pub fn table_with(rows: &[Row], containerd: &str, corral: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "| figure | {containerd} | {corral} | corral/containerd | target |\n\
         |---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = r.ratio().map(|x| format!("{x:.2}x")).unwrap_or("—".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.figure,
            r.containerd.cell(r.unit),
            r.corral.cell(r.unit),
            ratio,
            r.verdict()
        );
    }
    s
}

/// The Markdown table of single-sided figures.
pub fn single_table(rows: &[Single]) -> String {
    let mut s = String::from("| figure | median (min–max) |\n|---|---|\n");
    for r in rows {
        let _ = writeln!(s, "| {} | {} |", r.figure, r.samples.cell(r.unit));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_ratio() {
        let mut r = Row::new("x", Unit::Millis, Some(0.5));
        for v in [100.0, 140.0, 120.0] {
            r.containerd.push(v);
        }
        for v in [40.0, 80.0, 50.0, 70.0] {
            r.corral.push(v);
        }
        assert_eq!(r.containerd.median(), 120.0);
        assert_eq!(r.corral.median(), 60.0);
        assert_eq!((r.corral.min(), r.corral.max()), (40.0, 80.0));
        assert_eq!(r.ratio(), Some(0.5));
        let t = table(&[r]);
        assert!(
            t.contains("| x | 120.0 ms (100.0 ms–140.0 ms, n=3) |"),
            "{t}"
        );
        assert!(t.contains("0.50x | ≤ 0.50x: met |"), "{t}");
        assert!(Samples::default().median().is_nan());
    }
}
