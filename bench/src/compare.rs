//! `keelson bench compare OLD NEW`: what changed between two results files,
//! and which changes are regressions beyond a threshold (pure).

use std::fmt::Write;

use crate::results::{Cell, Results};

/// One compared value.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// `<services> <mode> <metric>`.
    pub what: String,
    /// Old median.
    pub old: f64,
    /// New median.
    pub new: f64,
    /// (new - old) / old, percent.
    pub percent: f64,
    /// Worse by more than the threshold.
    pub regression: bool,
}

/// The comparison.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Every value found in both.
    pub changes: Vec<Change>,
    /// Cells found in only one file.
    pub unmatched: Vec<String>,
}

impl Comparison {
    /// Whether any change is a regression.
    pub fn regressed(&self) -> bool {
        self.changes.iter().any(|c| c.regression)
    }

    /// A table of the changes, regressions marked.
    pub fn render(&self, threshold: f64) -> String {
        let mut s = String::new();
        let w = self
            .changes
            .iter()
            .map(|c| c.what.len())
            .max()
            .unwrap_or(10);
        for c in &self.changes {
            let _ = writeln!(
                s,
                "{:<w$}  {:>12.1} -> {:>12.1}  {:>+7.1}%{}",
                c.what,
                c.old,
                c.new,
                c.percent,
                if c.regression { "  REGRESSION" } else { "" }
            );
        }
        for u in &self.unmatched {
            let _ = writeln!(s, "{u}: in one file only");
        }
        let n = self.changes.iter().filter(|c| c.regression).count();
        let _ = writeln!(
            s,
            "{n} regression(s) beyond {threshold}% ({} values compared)",
            self.changes.len()
        );
        s
    }
}

/// Metrics of a cell: (name, value, lower is better).
fn metrics(c: &Cell) -> Vec<(String, f64, bool)> {
    let mut m = Vec::new();
    if let Some(p) = &c.connect_us {
        m.push(("connect p50 µs".into(), p.p50.median, true));
        m.push(("connect p99 µs".into(), p.p99.median, true));
    }
    for (k, s) in &c.cps {
        m.push((format!("conn/s c={k}"), s.median, false));
    }
    for (k, s) in &c.rps {
        m.push((format!("req/s c={k}"), s.median, false));
    }
    if let Some(p) = &c.programming_ms
        && p.p50.is_finite()
    {
        m.push(("programming p50 ms".into(), p.p50, true));
    }
    m
}

/// Compares `new` against `old`; `threshold` in percent.
pub fn compare(old: &Results, new: &Results, threshold: f64) -> Comparison {
    let mut out = Comparison::default();
    for n in &new.cells {
        let name = format!("{} {}", n.services, n.mode);
        let Some(o) = old
            .cells
            .iter()
            .find(|o| o.mode == n.mode && o.services == n.services)
        else {
            out.unmatched.push(name);
            continue;
        };
        let om = metrics(o);
        for (metric, newv, lower_better) in metrics(n) {
            let Some((_, oldv, _)) = om.iter().find(|(m, _, _)| *m == metric) else {
                continue;
            };
            if *oldv == 0.0 {
                continue;
            }
            let percent = (newv - oldv) / oldv * 100.0;
            let worse = if lower_better { percent } else { -percent };
            out.changes.push(Change {
                what: format!("{name} {metric}"),
                old: *oldv,
                new: newv,
                percent,
                regression: worse > threshold,
            });
        }
    }
    for o in &old.cells {
        if !new
            .cells
            .iter()
            .any(|n| n.mode == o.mode && n.services == o.services)
        {
            out.unmatched.push(format!("{} {}", o.services, o.mode));
        }
    }
    out
}

/// Parses `5%`, `5` or `0.5%` into percent.
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("threshold {s:?}: want a percentage such as 5%"))?;
    if !(0.0..1000.0).contains(&v) {
        return Err(format!("threshold {s:?}: want 0% to 1000%"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slower_connects_and_fewer_requests_are_regressions() {
        let old = crate::tests::results();
        let mut new = old.clone();
        let e = &mut new.cells[1];
        e.connect_us.as_mut().unwrap().p50.median *= 1.10;
        e.rps.get_mut("1").unwrap().median *= 0.97;
        let c = compare(&old, &new, 5.0);
        assert!(c.regressed());
        let reg: Vec<&str> = c
            .changes
            .iter()
            .filter(|c| c.regression)
            .map(|c| c.what.as_str())
            .collect();
        assert_eq!(reg, ["10 ebpf connect p50 µs"]);
        assert!(!compare(&old, &old, 5.0).regressed());
        // Faster is never a regression.
        let mut faster = old.clone();
        faster.cells[0].connect_us.as_mut().unwrap().p50.median *= 0.5;
        assert!(!compare(&old, &faster, 5.0).regressed());
        assert!(c.render(5.0).contains("REGRESSION"));
    }

    #[test]
    fn thresholds() {
        assert_eq!(parse_threshold("5%"), Ok(5.0));
        assert_eq!(parse_threshold("2.5"), Ok(2.5));
        assert!(parse_threshold("x").is_err());
        assert!(parse_threshold("-1%").is_err());
    }
}
