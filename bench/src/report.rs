//! The terminal table and `report.md` (pure: strings from [`Results`]).

use std::fmt::Write;

use crate::results::{Cell, Results};
use crate::stats::Spread;

fn sp(s: Option<&Spread>, digits: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits),
        Some(s) => format!("{:.d$}", s.median, d = digits),
        None => "-".into(),
    }
}

fn ratio(c: &Cell) -> String {
    c.vs_direct
        .as_ref()
        .map_or("-".into(), |v| format!("{:.2}×", v.connect_p50))
}

/// The rows of the main table: one per mode and Service count.
fn rows(r: &Results) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head: Vec<String> = [
        "services",
        "mode",
        "connect p50 µs",
        "p90",
        "p99",
        "p99.9",
        "p50/direct",
    ]
    .map(str::to_string)
    .to_vec();
    for c in &r.config.concurrency {
        head.push(format!("conn/s c={c}"));
    }
    for c in &r.config.concurrency {
        head.push(format!("req/s c={c}"));
    }
    head.extend(
        [
            "prog p50 ms",
            "prog p99 ms",
            "agent CPU %",
            "agent RSS MiB",
            "errors",
            "SYN rtx",
        ]
        .map(str::to_string),
    );
    let mut rows = Vec::new();
    for c in &r.cells {
        let cu = c.connect_us.as_ref();
        let mut row = vec![
            c.services.to_string(),
            c.mode.clone(),
            sp(cu.map(|p| &p.p50), 1),
            sp(cu.map(|p| &p.p90), 1),
            sp(cu.map(|p| &p.p99), 1),
            sp(cu.map(|p| &p.p999), 1),
            ratio(c),
        ];
        for k in &r.config.concurrency {
            row.push(sp(c.cps.get(&k.to_string()), 0));
        }
        for k in &r.config.concurrency {
            row.push(sp(c.rps.get(&k.to_string()), 0));
        }
        let p = c.programming_ms.as_ref();
        row.push(p.map_or("-".into(), |p| format!("{:.1}", p.p50)));
        row.push(p.map_or("-".into(), |p| format!("{:.1}", p.p99)));
        row.push(sp(c.agent_cpu_percent.as_ref(), 1));
        row.push(
            c.agent_rss_kib
                .as_ref()
                .map_or("-".into(), |s| format!("{:.0}", s.median / 1024.0)),
        );
        row.push(c.errors.to_string());
        row.push(c.syn_retransmits.to_string());
        rows.push(row);
    }
    (head, rows)
}

fn machine_line(r: &Results) -> String {
    let m = &r.machine;
    format!(
        "{} cores ({}), kernel {}, {:.1} GiB, load {:.2} {:.2} {:.2} before, {:.2} {:.2} {:.2} after",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.memory_kib as f64 / 1024.0 / 1024.0,
        m.load_before[0],
        m.load_before[1],
        m.load_before[2],
        m.load_after[0],
        m.load_after[1],
        m.load_after[2],
    )
}

/// A fixed-width table for the terminal.
pub fn table(r: &Results) -> String {
    let (head, rows) = rows(r);
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut s = String::new();
    let _ = writeln!(s, "{}", line(&head));
    for row in &rows {
        let _ = writeln!(s, "{}", line(row));
    }
    let _ = writeln!(
        s,
        "medians over {} rounds (min–max); {} build; {}",
        r.config.rounds,
        if r.build.is_empty() {
            "unrecorded"
        } else {
            &r.build
        },
        machine_line(r)
    );
    s
}

/// `report.md`.
pub fn markdown(r: &Results, plots: &[(&str, &str)]) -> String {
    let (head, rows) = rows(r);
    let mut s = String::new();
    let _ = writeln!(s, "# keelson bench services\n");
    let _ = writeln!(s, "`{}`\n", r.command);
    let _ = writeln!(
        s,
        "keelson {} ({} build), {} to {}. Machine: {}.\n",
        r.keelson_version,
        if r.build.is_empty() {
            "unrecorded"
        } else {
            &r.build
        },
        r.started,
        r.finished,
        machine_line(r)
    );
    let c = &r.config;
    let _ = writeln!(
        s,
        "{} backend pods on one node; the load generator on another node, one per mode \
         (direct: a node without a Service proxy, connecting to the backends' pod IPs; \
         ebpf / nftables: a node whose agent runs that proxy mode, connecting to ClusterIPs \
         chosen at random among all Services). {} rounds, modes alternating and each round \
         starting with the next mode; {} ms of load per mode, Service count and round, split \
         among connect latency and connections/s and requests/s at concurrency {:?}. \
         Values are medians over rounds with (min–max). Programming latency: {} Services \
         created per round and Service count, each timed from the create request to the first \
         answered request through the mode's node.\n",
        c.endpoints, c.rounds, c.duration_ms, c.concurrency, c.programming_samples
    );
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for row in &rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    let _ = writeln!(s);
    for (file, title) in plots {
        let _ = writeln!(s, "![{title}]({file})\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_markdown_name_every_cell() {
        let r = crate::tests::results();
        let t = table(&r);
        assert!(t.contains("direct") && t.contains("ebpf"), "{t}");
        assert!(t.contains("1.03×"), "{t}");
        let md = markdown(&r, &[("latency.svg", "latency")]);
        assert!(md.contains("| 10 | ebpf |"), "{md}");
        assert!(md.contains("![latency](latency.svg)"), "{md}");
    }
}
