//! The adaptive drain: one global limit on the hub's calls in flight to Odoo, adjusted every
//! window. Multiplicative decrease on errors, timeouts or a canary past the bound; a step up
//! while the canary holds near its baseline; never above a share of Odoo's workers, so the
//! people using Odoo keep room. Pure.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainConfig {
    /// Odoo's HTTP workers (its `workers` setting).
    pub odoo_workers: usize,
    /// The share of those workers the hub may take, at most.
    pub share: f64,
    /// The limit never goes below this.
    pub floor: usize,
    /// The limit when a plan starts.
    pub start: usize,
    /// How often the limit is adjusted, in milliseconds.
    pub window_ms: i64,
    /// The limit grows while the canary's p95 over the window stays at or below this many times
    /// its baseline...
    pub increase_below: f64,
    /// ...and shrinks when it goes above this many times (or on any error or timeout).
    pub decrease_above: f64,
    /// The factor a decrease multiplies the limit by.
    pub decrease_factor: f64,
    /// Windows in a row at the floor with the trouble persisting before the plan pauses.
    pub floor_windows: u32,
    /// Errors above this share of a window's calls and probes are trouble (a conflict now and
    /// then with people's own writes is not); any timeout is.
    pub error_ratio_max: f64,
    /// Fewer errors than this in a window are not a trend (one conflict in five calls is not
    /// 20 % of anything).
    pub errors_min: usize,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            odoo_workers: 8,
            share: 0.5,
            floor: 1,
            start: 2,
            window_ms: 2_000,
            increase_below: 1.25,
            decrease_above: 1.6,
            decrease_factor: 0.5,
            floor_windows: 3,
            error_ratio_max: 0.05,
            errors_min: 2,
        }
    }
}

impl DrainConfig {
    /// The most calls the hub may have in flight: its share of Odoo's workers, at least one.
    pub fn ceiling(&self) -> usize {
        ((self.odoo_workers as f64 * self.share).floor() as usize).max(1)
    }
}

/// What one window showed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Calls and probes.
    pub calls: usize,
    pub errors: usize,
    pub timeouts: usize,
    /// The canary's p95 over the window divided by its baseline, when both are known.
    pub canary_ratio: Option<f64>,
    /// Whether the hub had more to send than the limit let it (no growth without demand).
    pub saturated: bool,
    /// A health gate failing over its longer window (the latency bound): trouble even when
    /// this window alone looks calm.
    pub failing: Option<&'static str>,
}

/// What the limit did.
#[derive(Clone, Debug, PartialEq)]
pub enum Adjust {
    Held,
    Increased {
        from: usize,
        to: usize,
    },
    Decreased {
        from: usize,
        to: usize,
        why: String,
    },
    /// At the floor and still in trouble for `floor_windows` windows: stop probing on.
    Exhausted {
        why: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainLimit {
    pub limit: usize,
    /// Windows in a row at the floor with trouble.
    pub troubled_at_floor: u32,
    /// No trouble yet since the plan started: the limit doubles each calm window (slow start,
    /// as TCP's), then grows one at a time after the first decrease.
    #[serde(default)]
    pub slow_start: bool,
}

impl DrainLimit {
    pub fn new(cfg: &DrainConfig) -> Self {
        Self { limit: cfg.start.clamp(cfg.floor.max(1), cfg.ceiling()), troubled_at_floor: 0, slow_start: true }
    }

    pub fn on_window(&mut self, cfg: &DrainConfig, w: Window) -> Adjust {
        let ceiling = cfg.ceiling();
        let floor = cfg.floor.clamp(1, ceiling);
        let error_ratio = w.errors as f64 / w.calls.max(1) as f64;
        let trouble = if (w.errors >= cfg.errors_min && error_ratio > cfg.error_ratio_max) || w.timeouts > 0 {
            Some(format!("{} errors and {} timeouts in {} calls", w.errors, w.timeouts, w.calls))
        } else {
            w.canary_ratio
                .filter(|r| *r > cfg.decrease_above)
                .map(|r| format!("canary p95 at {r:.2}x its baseline (above {:.2}x)", cfg.decrease_above))
                .or_else(|| w.failing.map(|gate| format!("the {gate} gate fails")))
        };
        if let Some(why) = trouble {
            if self.limit <= floor {
                self.limit = floor;
                self.slow_start = false;
                self.troubled_at_floor += 1;
                if self.troubled_at_floor >= cfg.floor_windows {
                    return Adjust::Exhausted {
                        why: format!("{why}, with the limit at its floor of {floor} for {} windows", cfg.floor_windows),
                    };
                }
                return Adjust::Held;
            }
            let from = self.limit;
            self.limit = ((from as f64 * cfg.decrease_factor).floor() as usize).clamp(floor, ceiling);
            self.troubled_at_floor = 0;
            self.slow_start = false;
            return Adjust::Decreased { from, to: self.limit, why };
        }
        self.troubled_at_floor = 0;
        let near = w.canary_ratio.is_some_and(|r| r <= cfg.increase_below);
        if near && w.saturated && self.limit < ceiling {
            let from = self.limit;
            self.limit = if self.slow_start { (from * 2).min(ceiling) } else { from + 1 };
            return Adjust::Increased { from, to: self.limit };
        }
        if self.limit > ceiling {
            self.limit = ceiling;
        }
        Adjust::Held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calm(ratio: f64) -> Window {
        Window { calls: 10, errors: 0, timeouts: 0, canary_ratio: Some(ratio), saturated: true, failing: None }
    }

    #[test]
    fn doubles_until_trouble_then_grows_one_step_a_window_up_to_its_share_of_odoos_workers() {
        let cfg = DrainConfig { odoo_workers: 16, start: 1, ..DrainConfig::default() };
        let mut d = DrainLimit::new(&cfg);
        assert_eq!(d.limit, 1);
        let steps: Vec<Adjust> = (0..3).map(|_| d.on_window(&cfg, calm(1.0))).collect();
        assert_eq!(
            steps,
            [
                Adjust::Increased { from: 1, to: 2 },
                Adjust::Increased { from: 2, to: 4 },
                Adjust::Increased { from: 4, to: 8 }
            ]
        );
        assert_eq!(d.on_window(&cfg, calm(1.0)), Adjust::Held, "8 is half of 16 workers");
        assert!(matches!(d.on_window(&cfg, calm(2.0)), Adjust::Decreased { from: 8, to: 4, .. }));
        assert_eq!(d.on_window(&cfg, calm(1.0)), Adjust::Increased { from: 4, to: 5 }, "one at a time after trouble");
    }

    #[test]
    fn no_growth_without_demand_or_with_the_canary_off_its_baseline() {
        let cfg = DrainConfig { start: 1, ..DrainConfig::default() };
        let mut d = DrainLimit::new(&cfg);
        assert_eq!(d.on_window(&cfg, Window { saturated: false, ..calm(1.0) }), Adjust::Held);
        assert_eq!(d.on_window(&cfg, calm(1.4)), Adjust::Held, "between the two thresholds");
        assert_eq!(d.on_window(&cfg, Window { canary_ratio: None, ..calm(1.0) }), Adjust::Held);
        assert_eq!(d.limit, 1);
    }

    #[test]
    fn halves_on_trouble_then_pauses_at_the_floor() {
        let cfg = DrainConfig { start: 4, ..DrainConfig::default() };
        let mut d = DrainLimit::new(&cfg);
        let errors = Window { errors: 2, ..calm(1.0) };
        assert_eq!(
            d.on_window(&cfg, errors),
            Adjust::Decreased { from: 4, to: 2, why: "2 errors and 0 timeouts in 10 calls".into() }
        );
        assert!(matches!(d.on_window(&cfg, calm(1.7)), Adjust::Decreased { from: 2, to: 1, .. }));
        assert_eq!(d.on_window(&cfg, calm(1.7)), Adjust::Held);
        assert_eq!(d.on_window(&cfg, calm(1.7)), Adjust::Held);
        let Adjust::Exhausted { why } = d.on_window(&cfg, calm(1.7)) else { panic!("three windows at the floor") };
        assert!(why.contains("floor of 1 for 3 windows"), "{why}");
    }
}
