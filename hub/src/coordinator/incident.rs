//! Incident detection and classification from what the hub observes itself: its own Odoo
//! probe, which plants fell silent and when, the applier's outcomes, and the canary's latency.
//! A plant's own diagnosis arrives when its link returns and back-fills the cause. Pure: times
//! are passed in (milliseconds of wall time).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Odoo is unusable from the hub while plants still reach the hub.
    PlatformWide,
    /// Some plants fell silent while others and Odoo are fine: their network.
    PlantNetwork,
    /// Every plant fell silent at once: the hub's own link (and Odoo too, if it is unreachable
    /// as well: the hub cannot tell one from the other then, and says so).
    HubLink,
    /// Odoo answers, but slowly or with errors.
    Degraded,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::PlatformWide => "platform_wide",
            Class::PlantNetwork => "plant_network",
            Class::HubLink => "hub_link",
            Class::Degraded => "degraded",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub class: Class,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    /// The plants it concerns (empty: all).
    pub plants: Vec<String>,
    /// What the hub saw, newest last.
    pub evidence: Vec<String>,
    /// What the plants' own diagnoses said once their links returned.
    pub cause: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentConfig {
    /// A plant unheard this long is silent (its agent heartbeats every 5 s).
    pub silent_after_ms: i64,
    /// The share of errors among calls and probes over the gate window that makes Odoo
    /// degraded.
    pub degraded_error_ratio: f64,
    /// The canary's p95 over its baseline that makes Odoo degraded...
    pub degraded_latency: f64,
    /// ...when it is also this many milliseconds above it (a 2 ms read taking 7 ms is jitter,
    /// not an incident).
    pub degraded_margin_ms: f64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self { silent_after_ms: 30_000, degraded_error_ratio: 0.2, degraded_latency: 3.0, degraded_margin_ms: 100.0 }
    }
}

/// What the hub sees at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The hub's probe verdict: `Some(false)` unreachable (with its detail), `None` unknown yet.
    pub odoo_reachable: Option<bool>,
    pub odoo_detail: String,
    /// Per known plant, when it was last heard.
    pub last_heard_ms: BTreeMap<String, i64>,
    /// Errors and all of calls and probes over the gate window.
    pub errors: (usize, usize),
    /// The canary's p95 and its baseline, in milliseconds, when both are known.
    pub canary: Option<(f64, f64)>,
}

/// A change to show: an audit entry and an alarm.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Opened(Incident),
    Updated(Incident),
    Closed(Incident),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Incidents {
    pub open: Vec<Incident>,
    /// The newest closed ones (at most [`CLOSED_KEPT`]).
    pub closed: Vec<Incident>,
    pub next_id: u64,
}

pub const CLOSED_KEPT: usize = 50;

impl Incidents {
    pub fn is_open(&self, class: Class) -> bool {
        self.open.iter().any(|i| i.class == class)
    }

    /// Classifies what is observed now; returns what changed.
    pub fn observe(&mut self, now_ms: i64, cfg: &IncidentConfig, o: &Observed) -> Vec<Change> {
        let silent: Vec<(String, i64)> = o
            .last_heard_ms
            .iter()
            .filter(|(_, at)| now_ms - **at >= cfg.silent_after_ms)
            .map(|(p, at)| (p.clone(), *at))
            .collect();
        let known = o.last_heard_ms.len();
        let all_silent = known >= 2 && silent.len() == known;
        let odoo_down = o.odoo_reachable == Some(false);
        let mut wanted: Vec<(Class, Vec<String>, String)> = Vec::new();
        let heard = |at: i64| format!("{} s ago", (now_ms - at) / 1000);
        if all_silent {
            let mut why = format!("none of the {known} plants heard for {} s or more", cfg.silent_after_ms / 1000);
            if odoo_down {
                why.push_str(&format!(
                    ", and Odoo unreachable from the hub too ({}): the hub's own connectivity",
                    o.odoo_detail
                ));
            }
            wanted.push((Class::HubLink, Vec::new(), why));
        } else {
            if odoo_down {
                let reachable = known - silent.len();
                wanted.push((
                    Class::PlatformWide,
                    Vec::new(),
                    format!(
                        "the hub's probe finds Odoo unusable ({}) while {reachable} plants reach the hub",
                        o.odoo_detail
                    ),
                ));
            }
            for (plant, at) in &silent {
                wanted.push((
                    Class::PlantNetwork,
                    vec![plant.clone()],
                    format!("plant {plant} last heard {} while the others and Odoo answer", heard(*at)),
                ));
            }
        }
        if !odoo_down && !all_silent {
            let (errors, total) = o.errors;
            let ratio = if total > 0 { errors as f64 / total as f64 } else { 0.0 };
            if errors >= 3 && ratio > cfg.degraded_error_ratio {
                wanted.push((
                    Class::Degraded,
                    Vec::new(),
                    format!("{errors} errors in {total} calls and probes ({:.0} %)", ratio * 100.0),
                ));
            } else if let Some((p95, base)) =
                o.canary.filter(|(p, b)| *p > b * cfg.degraded_latency && p - b > cfg.degraded_margin_ms)
            {
                wanted.push((
                    Class::Degraded,
                    Vec::new(),
                    format!("canary p95 {p95:.0} ms, {:.1}x its baseline of {base:.0} ms", p95 / base),
                ));
            }
        }

        let mut changes = Vec::new();
        // Close what no longer holds.
        let mut still = Vec::new();
        for mut incident in std::mem::take(&mut self.open) {
            if wanted.iter().any(|(c, p, _)| *c == incident.class && *p == incident.plants) {
                still.push(incident);
            } else {
                incident.closed_ms = Some(now_ms);
                changes.push(Change::Closed(incident.clone()));
                self.closed.push(incident);
            }
        }
        self.open = still;
        // Open what is new; add evidence to what changed.
        for (class, plants, why) in wanted {
            if let Some(incident) = self.open.iter_mut().find(|i| i.class == class && i.plants == plants) {
                if incident.evidence.last().is_none_or(|e| !same_kind(e, &why)) {
                    incident.evidence.push(why);
                    changes.push(Change::Updated(incident.clone()));
                }
                continue;
            }
            self.next_id += 1;
            let incident = Incident {
                id: self.next_id,
                class,
                opened_ms: now_ms,
                closed_ms: None,
                plants,
                evidence: vec![why],
                cause: Vec::new(),
            };
            changes.push(Change::Opened(incident.clone()));
            self.open.push(incident);
        }
        let excess = self.closed.len().saturating_sub(CLOSED_KEPT);
        self.closed.drain(..excess);
        changes
    }

    /// A plant's own diagnosis, arrived with its returning heartbeats: it back-fills the cause
    /// of the incidents that concerned it (open, or closed within `since_ms`).
    pub fn backfill(&mut self, plant: &str, since_ms: i64, diagnosis: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let line = format!("plant {plant}: {diagnosis}");
        for incident in self.open.iter_mut().chain(self.closed.iter_mut()) {
            let concerns = incident.plants.is_empty() || incident.plants.iter().any(|p| p == plant);
            let recent = incident.closed_ms.is_none_or(|c| c >= since_ms);
            if concerns && recent && !incident.cause.contains(&line) {
                incident.cause.push(line.clone());
                changes.push(Change::Updated(incident.clone()));
            }
        }
        changes
    }
}

/// Evidence that only restates the same observation with a newer time is not news.
fn same_kind(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(plants: &[(&str, i64)]) -> BTreeMap<String, i64> {
        plants.iter().map(|(p, t)| (p.to_string(), *t)).collect()
    }

    #[test]
    fn odoo_down_with_plants_reaching_the_hub_is_platform_wide() {
        let mut i = Incidents::default();
        let o = Observed {
            odoo_reachable: Some(false),
            odoo_detail: "database down".into(),
            last_heard_ms: seen(&[("a", 99_000), ("b", 98_000)]),
            ..Observed::default()
        };
        let changes = i.observe(100_000, &IncidentConfig::default(), &o);
        let [Change::Opened(inc)] = &changes[..] else { panic!("{changes:?}") };
        assert_eq!(inc.class, Class::PlatformWide);
        assert_eq!(inc.evidence, ["the hub's probe finds Odoo unusable (database down) while 2 plants reach the hub"]);
        assert!(i.observe(101_000, &IncidentConfig::default(), &o).is_empty(), "nothing new");
        let back = Observed { odoo_reachable: Some(true), ..o };
        let changes = i.observe(102_000, &IncidentConfig::default(), &back);
        assert!(matches!(&changes[..], [Change::Closed(c)] if c.closed_ms == Some(102_000)));
        assert!(i.open.is_empty());
    }

    #[test]
    fn one_silent_plant_is_its_network_all_silent_is_the_hubs_link() {
        let cfg = IncidentConfig::default();
        let mut i = Incidents::default();
        let o = Observed {
            odoo_reachable: Some(true),
            last_heard_ms: seen(&[("a", 60_000), ("b", 99_000)]),
            ..Observed::default()
        };
        let changes = i.observe(100_000, &cfg, &o);
        let [Change::Opened(inc)] = &changes[..] else { panic!("{changes:?}") };
        assert_eq!((inc.class, inc.plants.clone()), (Class::PlantNetwork, vec!["a".to_owned()]));
        assert_eq!(inc.evidence, ["plant a last heard 40 s ago while the others and Odoo answer"]);

        let all = Observed {
            odoo_reachable: Some(false),
            odoo_detail: "timeout".into(),
            last_heard_ms: seen(&[("a", 60_000), ("b", 65_000)]),
            ..Observed::default()
        };
        let changes = i.observe(100_000, &cfg, &all);
        assert!(changes.iter().any(|c| matches!(c, Change::Closed(inc) if inc.class == Class::PlantNetwork)));
        let opened: Vec<&Incident> =
            changes.iter().filter_map(|c| if let Change::Opened(i) = c { Some(i) } else { None }).collect();
        assert_eq!(opened.len(), 1, "not platform-wide: the hub cannot tell");
        assert_eq!(opened[0].class, Class::HubLink);
        assert!(
            opened[0].evidence[0].ends_with("Odoo unreachable from the hub too (timeout): the hub's own connectivity")
        );
    }

    #[test]
    fn errors_or_a_slow_canary_are_degraded() {
        let cfg = IncidentConfig::default();
        let mut i = Incidents::default();
        let o = Observed { odoo_reachable: Some(true), errors: (30, 100), ..Observed::default() };
        assert!(matches!(&i.observe(1, &cfg, &o)[..], [Change::Opened(inc)] if inc.class == Class::Degraded));
        let mut j = Incidents::default();
        let jitter = Observed { odoo_reachable: Some(true), canary: Some((8.0, 2.0)), ..Observed::default() };
        assert!(j.observe(1, &cfg, &jitter).is_empty(), "4x, but 6 ms: jitter");
        let slow = Observed { odoo_reachable: Some(true), canary: Some((800.0, 200.0)), ..Observed::default() };
        let changes = j.observe(1, &cfg, &slow);
        assert!(
            matches!(&changes[..], [Change::Opened(inc)] if inc.evidence == ["canary p95 800 ms, 4.0x its baseline of 200 ms"]),
            "{changes:?}"
        );
    }

    #[test]
    fn a_plants_diagnosis_backfills_the_cause() {
        let cfg = IncidentConfig::default();
        let mut i = Incidents::default();
        let o = Observed {
            odoo_reachable: Some(true),
            last_heard_ms: seen(&[("a", 0), ("b", 99_000)]),
            ..Observed::default()
        };
        i.observe(100_000, &cfg, &o);
        let back = Observed { last_heard_ms: seen(&[("a", 100_500), ("b", 100_000)]), ..o };
        i.observe(101_000, &cfg, &back);
        let changes = i.backfill("a", 50_000, "hub link lost at 10:00:03; Odoo unreachable from the plant too");
        let [Change::Updated(inc)] = &changes[..] else { panic!("{changes:?}") };
        assert_eq!(inc.cause, ["plant a: hub link lost at 10:00:03; Odoo unreachable from the plant too"]);
        assert!(i.backfill("b", 50_000, "fine").is_empty(), "b was not concerned");
    }
}
