//! The plots of a run (pure): which charts, from which fields.

use crate::results::{Cell, Results};
use crate::stats::Spread;
use crate::svg::{Chart, Point, Series, render};

/// (file name, title, SVG document) of every plot.
pub fn plots(r: &Results) -> Vec<(String, String, String)> {
    let ticks: Vec<String> = r.config.services.iter().map(|n| n.to_string()).collect();
    let x_of = |c: &Cell| r.config.services.iter().position(|n| *n == c.services);
    let line = |mode: &str, name: String, dashed: bool, f: &dyn Fn(&Cell) -> Option<Spread>| {
        let points = r
            .cells
            .iter()
            .filter(|c| c.mode == mode)
            .filter_map(|c| {
                let s = f(c)?;
                Some(Point {
                    x: x_of(c)?,
                    y: s.median,
                    lo: s.min,
                    hi: s.max,
                })
            })
            .collect();
        Series {
            name,
            points,
            dashed,
        }
    };
    let modes = &r.config.modes;
    let mut out = Vec::new();
    let chart = |title: &str, y: &str, series| Chart {
        title: title.into(),
        x_label: "Services (connects to one chosen at random)".into(),
        y_label: y.into(),
        x_ticks: ticks.clone(),
        series,
    };
    // p50 and p99 apart: on one axis the tail flattens the medians.
    for (file, title, q) in [
        ("connect-latency.svg", "TCP connect latency, p50", "p50"),
        ("connect-latency-p99.svg", "TCP connect latency, p99", "p99"),
    ] {
        let series = modes
            .iter()
            .map(|m| {
                line(m, m.clone(), false, &|c| {
                    c.connect_us
                        .as_ref()
                        .map(|p| if q == "p50" { p.p50 } else { p.p99 })
                })
            })
            .collect();
        out.push((
            file.to_string(),
            format!("{title} against Service count"),
            render(&chart(title, "µs", series)),
        ));
    }
    let top = r
        .config
        .concurrency
        .iter()
        .max()
        .copied()
        .unwrap_or(1)
        .to_string();
    for (file, title, what, get) in [
        (
            "connections-per-second.svg",
            format!("New connections/s (connect, request, close) at concurrency {top}"),
            "connections/s",
            (|c: &Cell, k: &str| c.cps.get(k).copied()) as fn(&Cell, &str) -> Option<Spread>,
        ),
        (
            "requests-per-second.svg",
            format!("Requests/s over keep-alive connections at concurrency {top}"),
            "requests/s",
            |c: &Cell, k: &str| c.rps.get(k).copied(),
        ),
    ] {
        let series = modes
            .iter()
            .map(|m| line(m, m.clone(), false, &|c| get(c, &top)))
            .collect();
        out.push((
            file.to_string(),
            title.clone(),
            render(&chart(&title, what, series)),
        ));
    }
    let prog: Vec<Series> = modes
        .iter()
        .filter(|m| *m != "direct")
        .flat_map(|m| {
            [
                line(m, format!("{m} p50"), false, &|c| {
                    c.programming_ms.as_ref().and_then(|p| Spread::of(&[p.p50]))
                }),
                line(m, format!("{m} p99"), true, &|c| {
                    c.programming_ms.as_ref().and_then(|p| Spread::of(&[p.p99]))
                }),
            ]
        })
        .collect();
    out.push((
        "programming-latency.svg".to_string(),
        "Programming latency against Service count".to_string(),
        render(&chart(
            "Service create to first answered request (p50 solid, p99 dashed)",
            "ms",
            prog,
        )),
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn five_plots_each_with_every_mode() {
        let r = crate::tests::results();
        let p = super::plots(&r);
        assert_eq!(p.len(), 5);
        for (file, _, svg) in &p {
            assert!(file.ends_with(".svg"));
            assert!(svg.contains("ebpf"), "{file}");
        }
    }
}
