//! `keelson bench`: Service routing measured through each dataplane side
//! by side. See `bench/README.md` for what is measured, how, and the
//! results schema.
//!
//! - [`services`]: the benchmark (`keelson bench services`);
//! - [`compare_files`]: `keelson bench compare OLD NEW`;
//! - [`load::backend`], [`load::client_main`]: the programs the bench runs
//!   in the backend pods and in the client nodes.
//!
//! Pure parts (no I/O): [`stats`], [`results`], [`report`], [`svg`],
//! [`plots`], [`compare`].

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

pub mod compare;
pub mod image;
pub mod load;
pub mod plots;
pub mod report;
pub mod results;
mod run;
pub mod stats;
pub mod svg;

pub use run::services;

/// A way to reach the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The backends' pod IPs, from a node with no Service proxy: the baseline.
    Direct,
    /// ClusterIPs through the eBPF proxy.
    Ebpf,
    /// ClusterIPs through the nftables proxy.
    Nftables,
}

impl Mode {
    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Ebpf => "ebpf",
            Mode::Nftables => "nftables",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim() {
            "direct" => Ok(Mode::Direct),
            "ebpf" => Ok(Mode::Ebpf),
            "nftables" => Ok(Mode::Nftables),
            other => Err(format!(
                "unknown mode {other:?}: want direct, ebpf or nftables"
            )),
        }
    }
}

/// What `keelson bench services` runs.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// Start a throwaway cluster on this machine.
    pub local: bool,
    /// Or run against the cluster this reaches.
    pub kubeconfig: Option<PathBuf>,
    /// Service counts.
    pub services: Vec<usize>,
    /// Backend pods.
    pub endpoints: usize,
    /// Modes, in the order of the first round.
    pub modes: Vec<Mode>,
    /// Load time per mode, Service count and round.
    pub duration: Duration,
    /// Rounds.
    pub rounds: usize,
    /// Concurrencies of the connections/s and requests/s phases.
    pub concurrency: Vec<usize>,
    /// Services timed for programming latency per round and Service count.
    pub programming_samples: usize,
    /// Output directory.
    pub out: PathBuf,
    /// The command line, for the record.
    pub command: String,
    /// The `keelson` binary (this one): the agents, the load generators and
    /// the backend image are made from it.
    pub keelson: PathBuf,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            local: false,
            kubeconfig: None,
            services: vec![10, 100],
            endpoints: 2,
            modes: vec![Mode::Direct, Mode::Ebpf, Mode::Nftables],
            duration: Duration::from_secs(5),
            rounds: 3,
            concurrency: vec![1, 8],
            programming_samples: 5,
            out: PathBuf::from("keelson-bench"),
            command: String::new(),
            keelson: PathBuf::from("keelson"),
        }
    }
}

/// Parses `5s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: want e.g. 5s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("duration {s:?}: unit must be ms, s or m")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration {s:?}: must be above zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Writes `results.json`, `report.md` and the plots into `out`.
pub fn write_outputs(r: &results::Results, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))
    };
    write(
        "results.json",
        &serde_json::to_vec_pretty(r).context("encode results")?,
    )?;
    let plots = plots::plots(r);
    for (file, _, svg) in &plots {
        write(file, svg.as_bytes())?;
    }
    let refs: Vec<(&str, &str)> = plots
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect();
    write("report.md", report::markdown(r, &refs).as_bytes())
}

/// `keelson bench report`: the table, `report.md` and plots again from a
/// `results.json` (into `out`, which may be its own directory).
pub fn report_file(results: &Path, out: &Path) -> anyhow::Result<()> {
    let r = read_results(results)?;
    write_outputs(&r, out)?;
    print!("{}", report::table(&r));
    Ok(())
}

fn read_results(p: &Path) -> anyhow::Result<results::Results> {
    let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
    let r: results::Results =
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))?;
    if r.schema != results::SCHEMA {
        bail!(
            "{}: schema {:?}, want {:?}",
            p.display(),
            r.schema,
            results::SCHEMA
        );
    }
    Ok(r)
}

/// `keelson bench compare`: prints the changes; Ok(false) when one is a
/// regression beyond `threshold` percent.
pub fn compare_files(old: &Path, new: &Path, threshold: f64) -> anyhow::Result<bool> {
    let (o, n) = (read_results(old)?, read_results(new)?);
    let c = compare::compare(&o, &n, threshold);
    print!("{}", c.render(threshold));
    Ok(!c.regressed())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn results() -> results::Results {
        results::Results {
            schema: results::SCHEMA.into(),
            command: "keelson bench services --local".into(),
            keelson_version: "0.1.0".into(),
            build: "release".into(),
            started: "2026-01-01T00:00:00Z".into(),
            finished: "2026-01-01T00:01:00Z".into(),
            machine: results::Machine::default(),
            config: results::RunConfig {
                services: vec![10],
                endpoints: 2,
                modes: vec!["direct".into(), "ebpf".into()],
                duration_ms: 1000,
                rounds: 2,
                concurrency: vec![1],
                programming_samples: 3,
                local: true,
            },
            cells: crate::results::tests::sample(),
        }
    }

    #[test]
    fn modes_and_durations_parse_or_say_why_not() {
        assert_eq!("ebpf".parse::<Mode>(), Ok(Mode::Ebpf));
        let e = "iptables".parse::<Mode>().unwrap_err();
        assert!(e.contains("unknown mode \"iptables\""), "{e}");
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err() && parse_duration("5h").is_err());
    }

    #[test]
    fn outputs_round_trip_and_compare_clean() {
        let dir = tempfile::tempdir().unwrap();
        let r = results();
        write_outputs(&r, dir.path()).unwrap();
        for f in ["results.json", "report.md", "connect-latency.svg"] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let p = dir.path().join("results.json");
        assert!(compare_files(&p, &p, 5.0).unwrap());
    }
}
