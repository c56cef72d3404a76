//! Line charts as SVG, written by hand (pure): one line per mode against
//! the Service count, each point with its min–max whisker.

use std::fmt::Write;

/// One point: y with its spread.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// Index into the chart's x labels.
    pub x: usize,
    /// The median.
    pub y: f64,
    /// The smallest over rounds.
    pub lo: f64,
    /// The largest over rounds.
    pub hi: f64,
}

/// One line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// Its points.
    pub points: Vec<Point>,
    /// Dashed (a second measure of the same mode).
    pub dashed: bool,
}

/// A chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The categories along x (Service counts).
    pub x_ticks: Vec<String>,
    /// The lines.
    pub series: Vec<Series>,
}

/// The colour of a mode (stable across plots).
pub fn colour(mode: &str) -> &'static str {
    match mode.split_whitespace().next().unwrap_or("") {
        "direct" => "#555555",
        "ebpf" => "#1f77b4",
        "nftables" => "#d62728",
        _ => "#2ca02c",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound for the axis.
fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * e {
            return m * e;
        }
    }
    10.0 * e
}

/// Renders `c` as a standalone SVG document.
pub fn render(c: &Chart) -> String {
    let (w, h) = (720.0, 420.0);
    let (l, r, t, b) = (80.0, 170.0, 40.0, 60.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let ymax = nice_max(
        c.series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.hi.max(p.y)))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max),
    );
    let n = c.x_ticks.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            l + pw / 2.0
        } else {
            l + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| t + ph - ph * (v / ymax).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        l + pw / 2.0,
        esc(&c.title)
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            l + pw,
            l - 6.0,
            yy + 4.0,
            fmt_tick(v)
        );
    }
    for (i, label) in c.x_ticks.iter().enumerate() {
        let xx = x(i);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            t + ph,
            t + ph + 5.0,
            t + ph + 20.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{l}" y1="{t}" x2="{l}" y2="{:.1}" stroke="#333"/><line x1="{l}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        t + ph,
        t + ph,
        l + pw,
        t + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        l + pw / 2.0,
        h - 15.0,
        esc(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        t + ph / 2.0,
        esc(&c.y_label)
    );
    for (k, se) in c.series.iter().enumerate() {
        let col = colour(&se.name);
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|p| p.y.is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.x), y(p.y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{col}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
        for p in se.points.iter().filter(|p| p.y.is_finite()) {
            let xx = x(p.x);
            let _ = writeln!(
                s,
                r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="{col}"/><circle cx="{xx:.1}" cy="{:.1}" r="3.5" fill="{col}"/>"#,
                y(p.lo),
                y(p.hi),
                y(p.y)
            );
        }
        let ly = t + 10.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{col}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            l + pw + 15.0,
            l + pw + 40.0,
            l + pw + 46.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#666">whiskers: min–max over rounds</text>"##,
        l + pw + 15.0,
        t + ph
    );
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_tick() {
        let c = Chart {
            title: "connect <latency>".into(),
            x_label: "Services".into(),
            y_label: "µs".into(),
            x_ticks: vec!["10".into(), "100".into()],
            series: vec![Series {
                name: "ebpf p50".into(),
                points: vec![
                    Point {
                        x: 0,
                        y: 30.0,
                        lo: 29.0,
                        hi: 31.0,
                    },
                    Point {
                        x: 1,
                        y: 32.0,
                        lo: 30.0,
                        hi: 35.0,
                    },
                ],
                dashed: false,
            }],
        };
        let s = render(&c);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("connect &lt;latency&gt;"));
        assert!(s.contains(">ebpf p50<") && s.contains(">100<"));
        assert!(s.contains(colour("ebpf")));
        assert_eq!(nice_max(37.0), 50.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
