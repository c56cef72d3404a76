//! The results file (`results.json`) and how rounds become cells (pure).
//! The schema is documented in `bench/README.md`; change both together and
//! bump [`SCHEMA`] when a field changes meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::{Spread, quantile};

/// The `schema` field of every results file.
pub const SCHEMA: &str = "keelson-bench-services/v1";

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA`].
    pub schema: String,
    /// The command line that produced it.
    pub command: String,
    /// `keelson` version.
    pub keelson_version: String,
    /// `release` or `debug`: the profile the measuring binary was built
    /// with (load generator, backends and agents are all this binary).
    #[serde(default)]
    pub build: String,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC.
    pub finished: String,
    /// Where it ran.
    pub machine: Machine,
    /// What was asked for.
    pub config: RunConfig,
    /// One per mode and Service count.
    pub cells: Vec<Cell>,
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Online CPUs.
    pub cores: usize,
    /// From /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// Total memory, KiB.
    pub memory_kib: u64,
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_before: [f64; 3],
    /// ... and when it finished.
    pub load_after: [f64; 3],
}

/// The parameters of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// Service counts, ascending.
    pub services: Vec<usize>,
    /// Backend pods (every Service selects all of them).
    pub endpoints: usize,
    /// Modes, in the order of the first round.
    pub modes: Vec<String>,
    /// Load time per mode, Service count and round, split evenly among the
    /// phases (connect latency, then connections/s and requests/s at each
    /// concurrency).
    pub duration_ms: u64,
    /// Rounds (modes alternate within each; each round starts with the next mode).
    pub rounds: usize,
    /// Concurrencies of the connections/s and requests/s phases.
    pub concurrency: Vec<usize>,
    /// Services created per round and Service count to time programming.
    pub programming_samples: usize,
    /// Whether the bench started its own cluster.
    pub local: bool,
}

/// One round of one mode at one Service count: what the load generator saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Round {
    /// Connect latency percentiles of this round, µs.
    pub connect_us: Percentiles,
    /// Connects timed.
    pub connects: u64,
    /// Connections/s (connect, request, response, close), per concurrency.
    pub cps: BTreeMap<usize, f64>,
    /// Requests/s over keep-alive connections, per concurrency.
    pub rps: BTreeMap<usize, f64>,
    /// Requests answered (all phases).
    pub requests: u64,
    /// Connects or requests that failed (all phases).
    pub errors: u64,
    /// SYN retransmissions in the client's namespace (all phases).
    #[serde(default)]
    pub syn_retransmits: u64,
    /// CPU of the client node's agent during the round, % of one core.
    pub agent_cpu_percent: f64,
    /// RSS of the client node's agent at the end of the round, KiB.
    pub agent_rss_kib: u64,
}

/// p50/p90/p99/p99.9.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
}

impl Percentiles {
    /// Percentiles of latencies in ns, reported in µs; None when empty.
    pub fn of_ns(samples: &mut [u64]) -> Option<Percentiles> {
        samples.sort_unstable();
        let us = |q| quantile(samples, q).map(|ns| ns as f64 / 1000.0);
        Some(Percentiles {
            p50: us(0.5)?,
            p90: us(0.9)?,
            p99: us(0.99)?,
            p999: us(0.999)?,
        })
    }
}

/// The spread over rounds of each percentile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PercentileSpreads {
    /// Median.
    pub p50: Spread,
    /// 90th.
    pub p90: Spread,
    /// 99th.
    pub p99: Spread,
    /// 99.9th.
    pub p999: Spread,
}

/// One mode at one Service count, over all rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    /// `direct`, `ebpf` or `nftables`.
    pub mode: String,
    /// How many Services existed (connects go to one chosen at random).
    pub services: usize,
    /// Connect latency, µs: each percentile's median over rounds, with spread.
    pub connect_us: Option<PercentileSpreads>,
    /// Connections/s per concurrency (as a string key), over rounds.
    pub cps: BTreeMap<String, Spread>,
    /// Requests/s over keep-alive per concurrency, over rounds.
    pub rps: BTreeMap<String, Spread>,
    /// Requests answered, all rounds.
    pub requests: u64,
    /// Failed connects or requests, all rounds.
    pub errors: u64,
    /// SYN retransmissions in the client's namespace, all rounds (each a
    /// connect that waited at least 1 s: the slowest percentiles).
    #[serde(default)]
    pub syn_retransmits: u64,
    /// The client node's agent CPU, % of one core, over rounds.
    pub agent_cpu_percent: Option<Spread>,
    /// The client node's agent RSS, KiB, over rounds.
    pub agent_rss_kib: Option<Spread>,
    /// Service create to first answered connection through this mode, ms
    /// (None for `direct`).
    pub programming_ms: Option<Programming>,
    /// This mode against `direct` at the same Service count (None for
    /// `direct`, or when direct was not measured).
    pub vs_direct: Option<VsDirect>,
    /// Every round as measured.
    pub rounds: Vec<Round>,
}

/// Programming latency over all samples of all rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Programming {
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile (nearest rank: the maximum below 100 samples), ms.
    pub p99: f64,
    /// Samples that got through.
    pub samples: usize,
    /// Samples that did not within the timeout.
    pub timeouts: usize,
    /// Every sample, ms, in order.
    pub all_ms: Vec<f64>,
}

impl Programming {
    /// From per-sample latencies (None: timed out).
    pub fn of(samples: &[Option<f64>]) -> Option<Programming> {
        if samples.is_empty() {
            return None;
        }
        let all_ms: Vec<f64> = samples.iter().flatten().copied().collect();
        let mut us: Vec<u64> = all_ms.iter().map(|ms| (ms * 1000.0) as u64).collect();
        us.sort_unstable();
        let ms = |q| quantile(&us, q).map_or(f64::NAN, |v| v as f64 / 1000.0);
        Some(Programming {
            p50: ms(0.5),
            p99: ms(0.99),
            samples: all_ms.len(),
            timeouts: samples.len() - all_ms.len(),
            all_ms,
        })
    }
}

/// Ratios against `direct` (medians over rounds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VsDirect {
    /// Connect p50 / direct's (1.0 = as fast; higher is slower).
    pub connect_p50: f64,
    /// Connect p99 / direct's.
    pub connect_p99: f64,
    /// Connections/s / direct's, per concurrency.
    pub cps: BTreeMap<String, f64>,
    /// Requests/s / direct's, per concurrency.
    pub rps: BTreeMap<String, f64>,
}

fn spreads(rounds: &[Round], f: impl Fn(&Round) -> Option<f64>) -> Option<Spread> {
    let v: Vec<f64> = rounds.iter().filter_map(f).collect();
    Spread::of(&v)
}

/// Summarises the rounds of `mode` at `services` into a cell (`vs_direct`
/// is filled by [`relate_to_direct`]).
pub fn cell(mode: &str, services: usize, rounds: Vec<Round>, programming: &[Option<f64>]) -> Cell {
    let timed: Vec<Round> = rounds.iter().filter(|r| r.connects > 0).cloned().collect();
    let connect_us = (|| {
        Some(PercentileSpreads {
            p50: spreads(&timed, |r| Some(r.connect_us.p50))?,
            p90: spreads(&timed, |r| Some(r.connect_us.p90))?,
            p99: spreads(&timed, |r| Some(r.connect_us.p99))?,
            p999: spreads(&timed, |r| Some(r.connect_us.p999))?,
        })
    })();
    let per_conc = |get: &dyn Fn(&Round) -> &BTreeMap<usize, f64>| {
        let mut keys: Vec<usize> = rounds.iter().flat_map(|r| get(r).keys().copied()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter_map(|c| {
                Some((
                    c.to_string(),
                    spreads(&rounds, |r| get(r).get(&c).copied())?,
                ))
            })
            .collect::<BTreeMap<_, _>>()
    };
    Cell {
        mode: mode.to_string(),
        services,
        connect_us,
        cps: per_conc(&|r| &r.cps),
        rps: per_conc(&|r| &r.rps),
        requests: rounds.iter().map(|r| r.requests).sum(),
        errors: rounds.iter().map(|r| r.errors).sum(),
        syn_retransmits: rounds.iter().map(|r| r.syn_retransmits).sum(),
        agent_cpu_percent: spreads(&rounds, |r| Some(r.agent_cpu_percent)),
        agent_rss_kib: spreads(&rounds, |r| Some(r.agent_rss_kib as f64)),
        programming_ms: if mode == "direct" {
            None
        } else {
            Programming::of(programming)
        },
        vs_direct: None,
        rounds,
    }
}

/// Fills every non-direct cell's `vs_direct` from the direct cell with the
/// same Service count.
pub fn relate_to_direct(cells: &mut [Cell]) {
    let direct: Vec<Cell> = cells
        .iter()
        .filter(|c| c.mode == "direct")
        .cloned()
        .collect();
    for c in cells.iter_mut().filter(|c| c.mode != "direct") {
        let Some(d) = direct.iter().find(|d| d.services == c.services) else {
            continue;
        };
        let (Some(cu), Some(du)) = (&c.connect_us, &d.connect_us) else {
            continue;
        };
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let map = |a: &BTreeMap<String, Spread>, b: &BTreeMap<String, Spread>| {
            a.iter()
                .filter_map(|(k, s)| Some((k.clone(), ratio(s.median, b.get(k)?.median))))
                .collect()
        };
        c.vs_direct = Some(VsDirect {
            connect_p50: ratio(cu.p50.median, du.p50.median),
            connect_p99: ratio(cu.p99.median, du.p99.median),
            cps: map(&c.cps, &d.cps),
            rps: map(&c.rps, &d.rps),
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn round(p50: f64, cps: f64, rps: f64) -> Round {
        Round {
            connect_us: Percentiles {
                p50,
                p90: p50 * 1.5,
                p99: p50 * 2.0,
                p999: p50 * 3.0,
            },
            connects: 100,
            cps: [(1, cps)].into(),
            rps: [(1, rps)].into(),
            requests: 1000,
            errors: 0,
            syn_retransmits: 0,
            agent_cpu_percent: 1.0,
            agent_rss_kib: 50_000,
        }
    }

    pub(crate) fn sample() -> Vec<Cell> {
        let mut cells = vec![
            cell(
                "direct",
                10,
                vec![round(30.0, 1000.0, 5000.0), round(32.0, 900.0, 5100.0)],
                &[],
            ),
            cell(
                "ebpf",
                10,
                vec![round(31.0, 950.0, 5000.0), round(33.0, 950.0, 4900.0)],
                &[Some(100.0), Some(120.0), None],
            ),
        ];
        relate_to_direct(&mut cells);
        cells
    }

    #[test]
    fn percentiles_in_microseconds() {
        let mut ns: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = Percentiles::of_ns(&mut ns).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (500.0, 900.0, 990.0, 999.0));
        assert!(Percentiles::of_ns(&mut []).is_none());
    }

    #[test]
    fn cells_take_medians_over_rounds_and_ratios_to_direct() {
        let cells = sample();
        let e = &cells[1];
        assert_eq!(e.connect_us.as_ref().unwrap().p50.median, 32.0);
        assert_eq!(e.cps["1"].median, 950.0);
        assert_eq!(e.requests, 2000);
        let v = e.vs_direct.as_ref().unwrap();
        assert_eq!(v.connect_p50, 32.0 / 31.0);
        assert_eq!(v.cps["1"], 950.0 / 950.0);
        let p = e.programming_ms.as_ref().unwrap();
        assert_eq!((p.samples, p.timeouts, p.p50), (2, 1, 100.0));
        assert!(cells[0].programming_ms.is_none() && cells[0].vs_direct.is_none());
    }
}
