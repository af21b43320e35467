//! Health gates: what the hub measured of Odoo in a sliding window, against what it measured
//! before the incident. Pure: samples and times are passed in (milliseconds of wall time).
//!
//! Each decision keeps the values behind it. A gate with fewer samples than the minimum is
//! inconclusive, and an inconclusive decision never passes.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How a call or a canary probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    Ok,
    /// Odoo answered with an error that is its own state (a conflict, the database down), not a
    /// business refusal of one transaction.
    Error,
    /// No answer in time.
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at_ms: i64,
    latency_ms: f64,
    ended: Ended,
}

/// Samples of one measurement, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Series {
    samples: VecDeque<Sample>,
}

impl Series {
    pub fn push(&mut self, at_ms: i64, latency_ms: f64, ended: Ended) {
        self.samples.push_back(Sample { at_ms, latency_ms, ended });
    }

    /// Forgets samples older than `since_ms`.
    pub fn prune(&mut self, since_ms: i64) {
        while self.samples.front().is_some_and(|s| s.at_ms < since_ms) {
            self.samples.pop_front();
        }
    }

    fn since(&self, since_ms: i64) -> impl Iterator<Item = &Sample> {
        self.samples.iter().rev().take_while(move |s| s.at_ms >= since_ms)
    }

    /// Samples since `since_ms`: (all, errors, timeouts).
    pub fn counts(&self, since_ms: i64) -> (usize, usize, usize) {
        self.since(since_ms).fold((0, 0, 0), |(n, e, t), s| match s.ended {
            Ended::Ok => (n + 1, e, t),
            Ended::Error => (n + 1, e + 1, t),
            Ended::Timeout => (n + 1, e, t + 1),
        })
    }

    /// The 95th percentile of the answered samples' latency since `since_ms`, with their count.
    /// Timeouts count at the latency they were given up at.
    pub fn p95(&self, since_ms: i64) -> (Option<f64>, usize) {
        let mut latencies: Vec<f64> =
            self.since(since_ms).filter(|s| s.ended != Ended::Error).map(|s| s.latency_ms).collect();
        (percentile(&mut latencies, 0.95), latencies.len())
    }
}

/// The `q` quantile by nearest rank.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// What the gates judge by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateConfig {
    /// The sliding window the gates look at, in milliseconds.
    pub window_ms: i64,
    /// Fewer samples than this in the window: inconclusive.
    pub samples_min: usize,
    /// The bound on latency against its baseline (I8): the canary's p95 and each operation
    /// class's p95 stay at or below `latency_bound` times their baselines.
    pub latency_bound: f64,
    /// The largest share of calls and probes Odoo may answer with an error.
    pub error_ratio_max: f64,
    /// The most timeouts the window may hold.
    pub timeouts_max: usize,
    /// The error ratio fails only with at least this many errors: one conflict with a
    /// person's own write among fifteen calls is not 7 % of anything.
    pub errors_min: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            window_ms: 30_000,
            samples_min: 10,
            latency_bound: 2.0,
            error_ratio_max: 0.05,
            timeouts_max: 0,
            errors_min: 2,
        }
    }
}

/// What latency was before the incident.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// The canary probe's p95, in milliseconds.
    pub canary_p95_ms: Option<f64>,
    /// Each operation class's (`model.method`) p95 per transaction, in milliseconds.
    pub classes: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "why", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail(String),
    Inconclusive(String),
}

/// One gate's judgement and the values behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: String,
    pub verdict: Verdict,
    /// What was measured, such as `p95 9.0 ms of 40 samples, baseline 5.0 ms, bound 10.0 ms`.
    pub values: String,
}

/// A decision: every gate's result at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: i64,
    pub results: Vec<GateResult>,
}

impl Decision {
    /// Fail if any gate failed; else inconclusive if any was; else pass.
    pub fn verdict(&self) -> Verdict {
        let lines = |which: fn(&Verdict) -> bool| -> Vec<String> {
            self.results.iter().filter(|r| which(&r.verdict)).map(|r| format!("{}: {}", r.gate, r.values)).collect()
        };
        let failed = lines(|v| matches!(v, Verdict::Fail(_)));
        if !failed.is_empty() {
            return Verdict::Fail(failed.join("; "));
        }
        let unsure = lines(|v| matches!(v, Verdict::Inconclusive(_)));
        if !unsure.is_empty() {
            return Verdict::Inconclusive(unsure.join("; "));
        }
        Verdict::Pass
    }

    /// The values behind the decision, one line.
    pub fn summary(&self) -> String {
        self.results.iter().map(|r| format!("{} {}", r.gate, r.values)).collect::<Vec<_>>().join("; ")
    }
}

/// What the gates watch: the canary probe and the applier's calls per operation class.
#[derive(Clone, Debug, Default)]
pub struct Measurements {
    pub canary: Series,
    /// Per operation class, one sample per transaction (a batch's latency shared among its
    /// transactions).
    pub classes: BTreeMap<String, Series>,
    /// Every call to Odoo, one sample per call.
    pub calls: Series,
}

impl Measurements {
    pub fn prune(&mut self, since_ms: i64) {
        self.canary.prune(since_ms);
        self.calls.prune(since_ms);
        for s in self.classes.values_mut() {
            s.prune(since_ms);
        }
        self.classes.retain(|_, s| !s.samples.is_empty());
    }

    /// The baselines these samples give since `since_ms` (classes with enough samples only).
    pub fn baselines(&self, since_ms: i64, samples_min: usize) -> Baselines {
        let (canary, n) = self.canary.p95(since_ms);
        let classes = self
            .classes
            .iter()
            .filter_map(|(class, s)| match s.p95(since_ms) {
                (Some(p), n) if n >= samples_min => Some((class.clone(), p)),
                _ => None,
            })
            .collect();
        Baselines { canary_p95_ms: canary.filter(|_| n >= samples_min), classes }
    }

    /// Every gate, over the window ending at `now_ms`. `applying` says whether the plan expects
    /// applies now (a wave draining): then too few of them is inconclusive; otherwise (a wave
    /// baking on its live traffic alone) the canary speaks for Odoo and the applier gate says
    /// it had nothing to judge.
    /// Samples before `floor_ms` (the plan's start: what the incident itself looked like) are
    /// left out.
    pub fn decide(&self, now_ms: i64, floor_ms: i64, cfg: &GateConfig, base: &Baselines, applying: bool) -> Decision {
        let since = (now_ms - cfg.window_ms).max(floor_ms);
        let mut results = Vec::new();
        let min = cfg.samples_min;

        // The canary's latency against its baseline.
        let (p95, n) = self.canary.p95(since);
        let gate = "canary_latency".to_owned();
        results.push(match (p95, base.canary_p95_ms) {
            (_, None) => GateResult {
                gate,
                verdict: Verdict::Inconclusive("no baseline".into()),
                values: "no canary baseline was measured before the incident (set reopening.canary_baseline)".into(),
            },
            (Some(p), Some(b)) if n >= min => {
                let bound = b * cfg.latency_bound;
                let values = format!("p95 {p:.1} ms of {n} samples, baseline {b:.1} ms, bound {bound:.1} ms");
                let verdict = if p <= bound { Verdict::Pass } else { Verdict::Fail(values.clone()) };
                GateResult { gate, verdict, values }
            }
            (_, Some(_)) => GateResult {
                gate,
                verdict: Verdict::Inconclusive("too few samples".into()),
                values: format!("{n} samples, {min} needed"),
            },
        });

        // Errors and timeouts, over calls and canary probes together.
        let (calls, call_errors, call_timeouts) = self.calls.counts(since);
        let (probes, probe_errors, probe_timeouts) = self.canary.counts(since);
        let total = calls + probes;
        let errors = call_errors + probe_errors;
        let timeouts = call_timeouts + probe_timeouts;
        let values = format!("{errors} errors of {total} calls and probes");
        results.push(if total < min {
            GateResult {
                gate: "error_ratio".into(),
                verdict: Verdict::Inconclusive("too few samples".into()),
                values: format!("{total} samples, {min} needed"),
            }
        } else {
            let ratio = errors as f64 / total as f64;
            let values = format!("{values} ({:.1} %, at most {:.1} %)", ratio * 100.0, cfg.error_ratio_max * 100.0);
            let failing = ratio > cfg.error_ratio_max && errors >= cfg.errors_min;
            let verdict = if failing { Verdict::Fail(values.clone()) } else { Verdict::Pass };
            GateResult { gate: "error_ratio".into(), verdict, values }
        });
        let values = format!("{timeouts} timeouts, at most {}", cfg.timeouts_max);
        let verdict = if timeouts <= cfg.timeouts_max { Verdict::Pass } else { Verdict::Fail(values.clone()) };
        results.push(GateResult { gate: "timeouts".into(), verdict, values });

        // The applier's p95 per operation class against its pre-incident figure.
        let mut judged = 0;
        for (class, series) in &self.classes {
            let (Some(p), n) = series.p95(since) else { continue };
            let Some(b) = base.classes.get(class) else { continue };
            if n < min {
                continue;
            }
            judged += 1;
            let bound = b * cfg.latency_bound;
            let values = format!("{class}: p95 {p:.2} ms of {n}, baseline {b:.2} ms, bound {bound:.2} ms");
            let verdict = if p <= bound { Verdict::Pass } else { Verdict::Fail(values.clone()) };
            results.push(GateResult { gate: "apply_latency".into(), verdict, values });
        }
        if judged == 0 {
            let values = if base.classes.is_empty() {
                "no operation class has a pre-incident figure".to_owned()
            } else {
                format!("no operation class with a baseline has {min} samples in the window")
            };
            let verdict = if applying && !base.classes.is_empty() {
                Verdict::Inconclusive("too few samples".into())
            } else {
                Verdict::Pass
            };
            results.push(GateResult { gate: "apply_latency".into(), verdict, values });
        }
        Decision { at_ms: now_ms, results }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GateConfig {
        GateConfig { window_ms: 10_000, samples_min: 5, ..GateConfig::default() }
    }

    fn base() -> Baselines {
        Baselines { canary_p95_ms: Some(5.0), classes: [("stock.quant.write".to_owned(), 2.0)].into() }
    }

    fn with_canary(latencies: &[f64]) -> Measurements {
        let mut m = Measurements::default();
        for (i, l) in latencies.iter().enumerate() {
            m.canary.push(i as i64 * 100, *l, Ended::Ok);
        }
        m
    }

    #[test]
    fn too_few_samples_is_inconclusive_never_a_pass() {
        let m = with_canary(&[5.0, 5.0, 5.0]);
        let d = m.decide(1_000, 0, &cfg(), &base(), false);
        assert_eq!(d.results[0].verdict, Verdict::Inconclusive("too few samples".into()));
        assert_eq!(d.results[0].values, "3 samples, 5 needed");
        assert!(matches!(d.verdict(), Verdict::Inconclusive(_)));
        let none = Measurements::default().decide(1_000, 0, &cfg(), &Baselines::default(), false);
        assert!(matches!(none.verdict(), Verdict::Inconclusive(_)), "no baseline, no samples: {none:?}");
    }

    #[test]
    fn the_canary_gate_holds_p95_to_the_bound_times_its_baseline() {
        let good = with_canary(&[5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        let d = good.decide(1_000, 0, &cfg(), &base(), false);
        assert_eq!(d.results[0].verdict, Verdict::Pass, "{d:?}");
        assert_eq!(d.results[0].values, "p95 10.0 ms of 6 samples, baseline 5.0 ms, bound 10.0 ms");
        assert_eq!(d.verdict(), Verdict::Pass);
        let bad = with_canary(&[5.0, 6.0, 7.0, 8.0, 9.0, 10.5]);
        assert!(matches!(bad.decide(1_000, 0, &cfg(), &base(), false).verdict(), Verdict::Fail(_)));
    }

    #[test]
    fn errors_timeouts_and_apply_latency_each_fail_the_decision() {
        let mut m = with_canary(&[5.0; 10]);
        m.calls.push(900, 3.0, Ended::Error);
        let d = m.decide(1_000, 0, &cfg(), &base(), false);
        assert_eq!(d.results[1].values, "1 errors of 11 calls and probes (9.1 %, at most 5.0 %)");
        assert_eq!(d.verdict(), Verdict::Pass, "one error is not a trend");
        m.calls.push(950, 3.0, Ended::Error);
        let d = m.decide(1_000, 0, &cfg(), &base(), false);
        assert_eq!(d.results[1].values, "2 errors of 12 calls and probes (16.7 %, at most 5.0 %)");
        assert!(matches!(d.verdict(), Verdict::Fail(_)));

        let mut m = with_canary(&[5.0; 10]);
        m.canary.push(950, 500.0, Ended::Timeout);
        let d = m.decide(1_000, 0, &cfg(), &base(), false);
        assert_eq!(
            d.results[2],
            GateResult {
                gate: "timeouts".into(),
                verdict: Verdict::Fail("1 timeouts, at most 0".into()),
                values: "1 timeouts, at most 0".into()
            }
        );

        let mut m = with_canary(&[5.0; 10]);
        for i in 0..5 {
            m.classes.entry("stock.quant.write".into()).or_default().push(i * 10, 4.5, Ended::Ok);
        }
        let d = m.decide(1_000, 0, &cfg(), &base(), true);
        assert_eq!(d.results[3].values, "stock.quant.write: p95 4.50 ms of 5, baseline 2.00 ms, bound 4.00 ms");
        assert!(matches!(d.verdict(), Verdict::Fail(_)));
    }

    #[test]
    fn while_draining_too_few_applies_is_inconclusive_while_baking_the_canary_speaks() {
        let m = with_canary(&[5.0; 10]);
        assert!(matches!(m.decide(1_000, 0, &cfg(), &base(), true).verdict(), Verdict::Inconclusive(_)));
        assert_eq!(m.decide(1_000, 0, &cfg(), &base(), false).verdict(), Verdict::Pass);
    }

    #[test]
    fn samples_leave_the_window() {
        let mut m = with_canary(&[50.0; 10]);
        for i in 0..10 {
            m.canary.push(20_000 + i * 100, 5.0, Ended::Ok);
        }
        assert_eq!(m.decide(21_000, 0, &cfg(), &base(), false).verdict(), Verdict::Pass);
        m.prune(11_000);
        assert_eq!(m.canary.counts(0), (10, 0, 0));
    }
}
