//! The probe's state machine, shared by the agent (its own view of Odoo, without credentials)
//! and the hub (with its credentials, on the whole ladder of ODOO.md). Sans-IO: run on whatever
//! clock its caller passes.
//! - **Hysteresis**: the verdict changes only after [`ProbeConfig::confirm`] observations in a
//!   row that disagree with it (8 by default). At 20 % random failures a false change needs 8
//!   failures in a row: 0.2⁸ ≈ 2.6 × 10⁻⁶ per probe.
//! - **Full-jitter schedule**: the delay before the next probe is uniform in
//!   [0, min(interval, first × 2ⁿ)]. `n` starts again at the first disagreeing observation and at
//!   each change, so confirmations come quickly and a settled verdict is checked about every
//!   `interval / 2` with probes never in step. With the defaults (first 250 ms, interval 10 s)
//!   an outage is confirmed at most 0.25 + 0.5 + 1 + 2 + 4 + 8 + 10 + 10 = 35.75 s after the
//!   first failed probe, which comes at most 10 s after Odoo went away.

use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use crate::backoff::Backoff;

/// The probe's tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The longest gap between two probes of a settled verdict.
    pub interval: Duration,
    /// The longest gap right after a change or a first disagreeing observation.
    pub first: Duration,
    /// Observations in a row that disagree with the verdict before it changes.
    pub confirm: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), first: Duration::from_millis(250), confirm: 8 }
    }
}

/// What the probe concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No observation yet.
    Unknown,
    /// Odoo answers (and its database server too, where its version says so).
    Reachable,
    /// Odoo answers but says its database server is unreachable.
    DatabaseDown,
    /// No usable answer: connection refused or timed out, TLS failure, or an HTTP error from
    /// whatever stands in front of Odoo.
    Unreachable,
    /// Odoo answers but refuses the hub's login or key (the hub's probe only).
    CredentialsRefused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Reachable => "reachable",
            Self::DatabaseDown => "database_down",
            Self::Unreachable => "unreachable",
            Self::CredentialsRefused => "credentials_refused",
        }
    }
}

/// One probe's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub verdict: Verdict,
    /// What was seen, in words.
    pub detail: String,
    /// The server version, when `common.version` answered.
    pub version: Option<String>,
}

impl Observation {
    pub fn unreachable(detail: impl Into<String>) -> Self {
        Self { verdict: Verdict::Unreachable, detail: detail.into(), version: None }
    }
}

/// The probe's state machine.
#[derive(Debug)]
pub struct Prober {
    cfg: ProbeConfig,
    verdict: Verdict,
    /// Observations in a row that disagree with the verdict.
    disagreeing: u32,
    backoff: Backoff,
    next: Instant,
}

impl Prober {
    /// A prober whose first probe is due at `now`.
    pub fn new(cfg: ProbeConfig, now: Instant) -> Self {
        Self {
            cfg,
            verdict: Verdict::Unknown,
            disagreeing: 0,
            backoff: Backoff::new(cfg.first, cfg.interval.max(cfg.first)),
            next: now,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// When the next probe is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// Takes a probe's result at `now` and schedules the next; returns the new verdict when it
    /// changed.
    pub fn handle_observation(&mut self, now: Instant, verdict: Verdict, rng: &mut impl Rng) -> Option<Verdict> {
        let changed = if self.verdict == Verdict::Unknown {
            // Nothing to contradict yet: the first answer is the verdict.
            Some(verdict)
        } else if verdict == self.verdict {
            self.disagreeing = 0;
            None
        } else {
            self.disagreeing += 1;
            if self.disagreeing == 1 {
                self.backoff.reset();
            }
            (self.disagreeing >= self.cfg.confirm.max(1)).then_some(verdict)
        };
        if let Some(v) = changed {
            self.verdict = v;
            self.disagreeing = 0;
            self.backoff.reset();
        }
        self.next = now + self.backoff.next_delay(rng);
        changed
    }
}

/// An error with its causes, which say whether a probe failed on DNS, a refused connection, a
/// timeout or TLS (an HTTP client's own message often names only the URL).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
