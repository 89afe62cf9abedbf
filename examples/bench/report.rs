//! The results: one table row (and optionally one JSON line) per run, and the comparison's
//! summary.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::load::Measured;

/// One run's result.
pub struct Row {
    pub scenario: &'static str,
    /// The round of a comparison, counting from 1.
    pub round: Option<usize>,
    pub concurrency: usize,
    pub connections: usize,
    pub measured: Measured,
    /// The encoded size of the reply, when known.
    pub reply_bytes: Option<usize>,
}

impl Row {
    fn label(&self) -> String {
        match self.round {
            Some(round) => format!("{}#{round}", self.scenario),
            None => self.scenario.to_owned(),
        }
    }

    pub fn calls_per_sec(&self) -> f64 {
        self.measured.calls_per_sec()
    }

    fn json(&self) -> Value {
        let m = &self.measured;
        let mut value = json!({
            "scenario": self.scenario,
            "round": self.round,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "seconds": m.elapsed.as_secs_f64(),
            "calls": m.ok,
            "calls_per_sec": round1(m.calls_per_sec()),
            "p50_us": quantile(&m.latency, 0.50),
            "p99_us": quantile(&m.latency, 0.99),
            "p999_us": quantile(&m.latency, 0.999),
            "max_us": m.latency.max(),
            "errors": m.errors,
            "first_error": m.first_error,
            "reply_bytes": self.reply_bytes,
        });
        if let Some(open) = &m.open {
            value["target_rate"] = json!(open.rate);
            value["latency_from"] = json!("due time");
            value["start_lag_p50_us"] = json!(quantile(&open.start_lag, 0.50));
            value["start_lag_p99_us"] = json!(quantile(&open.start_lag, 0.99));
            value["service_p50_us"] = json!(quantile(&open.service, 0.50));
            value["service_p99_us"] = json!(quantile(&open.service, 0.99));
            value["service_p999_us"] = json!(quantile(&open.service, 0.999));
            value["unsent"] = json!(open.unsent);
        }
        value
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The latency at `q`, microseconds; 0 when nothing was recorded.
pub fn quantile(histogram: &Histogram<u64>, q: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(q)
    }
}

/// Prints rows under one header, and JSON lines too when asked.
pub struct Printer {
    json: bool,
    header_printed: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            header_printed: false,
        }
    }

    /// Prints a note between rows (setup steps and the like), on stderr so that stdout is
    /// only the results.
    pub fn note(&self, text: impl std::fmt::Display) {
        eprintln!("# {text}");
    }

    pub fn row(&mut self, row: &Row) {
        if !self.header_printed {
            println!(
                "{:<14}{:>6}{:>7}{:>12}{:>10}{:>10}{:>11}{:>9}{:>13}",
                "scenario",
                "conc",
                "conns",
                "calls/s",
                "p50(us)",
                "p99(us)",
                "p99.9(us)",
                "errors",
                "reply_bytes"
            );
            self.header_printed = true;
        }
        let m = &row.measured;
        println!(
            "{:<14}{:>6}{:>7}{:>12.1}{:>10}{:>10}{:>11}{:>9}{:>13}",
            row.label(),
            row.concurrency,
            row.connections,
            m.calls_per_sec(),
            quantile(&m.latency, 0.50),
            quantile(&m.latency, 0.99),
            quantile(&m.latency, 0.999),
            m.errors,
            row.reply_bytes
                .map_or_else(|| "-".to_owned(), |b| b.to_string()),
        );
        if let Some(open) = &m.open {
            println!(
                "  open loop at {:.0} calls/s asked, {:.1} done; latency above is from each call's due time. \
                 From sending: p50 {} p99 {} p99.9 {} us. Due-to-sent lag: p50 {} p99 {} us.{}",
                open.rate,
                m.calls_per_sec(),
                quantile(&open.service, 0.50),
                quantile(&open.service, 0.99),
                quantile(&open.service, 0.999),
                quantile(&open.start_lag, 0.50),
                quantile(&open.start_lag, 0.99),
                if open.unsent > 0 {
                    format!(
                        " {} calls due were never sent: the rate was not sustained, so the latency above is a lower bound.",
                        open.unsent
                    )
                } else {
                    String::new()
                }
            );
        }
        if let Some(error) = &m.first_error {
            println!("  first error: {error}");
        }
        if self.json {
            println!("{}", row.json());
        }
    }

    /// Prints the comparison: per-round ratios, each scenario's median, and the ratios of
    /// the medians.
    pub fn compare_summary(&mut self, rows: &[Row], rounds: usize, noop_host: &str) {
        let per = |scenario: &str| -> Vec<&Row> {
            rows.iter().filter(|r| r.scenario == scenario).collect()
        };
        let (noop, verify, health) = (per("noop"), per("verify"), per("health"));
        let rates = |rs: &[&Row]| rs.iter().map(|r| r.calls_per_sec()).collect::<Vec<_>>();
        let lat = |rs: &[&Row], q: f64| {
            rs.iter()
                .map(|r| quantile(&r.measured.latency, q) as f64)
                .collect::<Vec<_>>()
        };
        let Some(first) = rows.first() else {
            return;
        };
        println!();
        println!(
            "compare: {rounds} round(s) of noop, verify, health, alternating; conc {}, conns {}; no-op server {noop_host}; medians:",
            first.concurrency, first.connections
        );
        println!(
            "{:<14}{:>12}{:>10}{:>10}{:>11}{:>9}",
            "scenario", "calls/s", "p50(us)", "p99(us)", "p99.9(us)", "errors"
        );
        let mut medians = serde_json::Map::new();
        for (name, rs) in [("noop", &noop), ("verify", &verify), ("health", &health)] {
            let median_rate = median(rates(rs));
            let errors: u64 = rs.iter().map(|r| r.measured.errors).sum();
            println!(
                "{:<14}{:>12.1}{:>10.0}{:>10.0}{:>11.0}{:>9}",
                name,
                median_rate,
                median(lat(rs, 0.50)),
                median(lat(rs, 0.99)),
                median(lat(rs, 0.999)),
                errors
            );
            medians.insert(name.into(), json!(round1(median_rate)));
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let verify_noop = ratio(median(rates(&verify)), median(rates(&noop)));
        let verify_health = ratio(median(rates(&verify)), median(rates(&health)));
        let per_round = |other: &[&Row]| -> Vec<f64> {
            verify
                .iter()
                .zip(other)
                .map(|(v, o)| ratio(v.calls_per_sec(), o.calls_per_sec()))
                .collect()
        };
        let show = |values: &[f64]| {
            let each = values
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(" ");
            format!(
                "per round: {each}; their median {:.3}",
                median(values.to_vec())
            )
        };
        let (rounds_noop, rounds_health) = (per_round(&noop), per_round(&health));
        println!(
            "verify/noop   = {verify_noop:.3}  (ratio of the medians; {})",
            show(&rounds_noop)
        );
        println!(
            "verify/health = {verify_health:.3}  (ratio of the medians; {})",
            show(&rounds_health)
        );
        let bytes =
            |rs: &[&Row]| -> Vec<usize> { rs.iter().filter_map(|r| r.reply_bytes).collect() };
        let (noop_bytes, verify_bytes) = (bytes(&noop), bytes(&verify));
        let all = noop_bytes.iter().chain(&verify_bytes);
        let spread = all.clone().max().unwrap_or(&0) - all.min().unwrap_or(&0);
        println!(
            "reply bytes   noop {noop_bytes:?}, verify {verify_bytes:?}{}",
            if spread <= 4 {
                " (same message; use_count's varint grows as the server counts uses)"
            } else {
                " (DIFFER: the real reply changed between rounds, so the no-op reply did not match it in every round)"
            }
        );
        if self.json {
            println!(
                "{}",
                json!({
                    "summary": "compare",
                    "noop_host": noop_host,
                    "noop_reply_bytes": noop_bytes,
                    "verify_reply_bytes": verify_bytes,
                    "rounds": rounds,
                    "concurrency": first.concurrency,
                    "connections": first.connections,
                    "median_calls_per_sec": medians,
                    "verify_over_noop": verify_noop,
                    "verify_over_health": verify_health,
                    "verify_over_noop_per_round": rounds_noop,
                    "verify_over_noop_median_of_rounds": median(rounds_noop.clone()),
                    "verify_over_health_per_round": rounds_health,
                    "verify_over_health_median_of_rounds": median(rounds_health.clone()),
                })
            );
        }
    }
}

impl Printer {
    /// Medians of two alternated scenarios and the ratio `a/b`, of the medians and per round.
    pub fn pair_summary(&mut self, rows: &[Row], a: &'static str, b: &'static str) {
        let rates = |scenario: &str| -> Vec<f64> {
            rows.iter()
                .filter(|r| r.scenario == scenario)
                .map(|r| r.calls_per_sec())
                .collect()
        };
        let (rates_a, rates_b) = (rates(a), rates(b));
        let (median_a, median_b) = (median(rates_a.clone()), median(rates_b.clone()));
        let per_round: Vec<f64> = rates_a.iter().zip(&rates_b).map(|(x, y)| x / y).collect();
        println!();
        println!(
            "{a}/{b} = {:.3}  (medians {median_a:.1} and {median_b:.1} calls/s over {} round(s); per round: {}; their median {:.3})",
            median_a / median_b,
            per_round.len(),
            per_round
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            median(per_round.clone())
        );
        if self.json {
            println!(
                "{}",
                json!({
                    "summary": format!("{a}/{b}"),
                    "median_calls_per_sec": {a: round1(median_a), b: round1(median_b)},
                    "ratio_of_medians": median_a / median_b,
                    "per_round": per_round,
                })
            );
        }
    }
}

/// The median; the mean of the middle two for an even count; NaN for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
