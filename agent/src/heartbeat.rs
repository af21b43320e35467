//! The agent's heartbeat: its mode, plant IT's manual state, the gateway's health and the
//! journal's figures, sent to the hub every [`HEARTBEAT_EVERY`] while streaming and at once when
//! the manual state changes (so the hub stops or resumes applying for the plant, and shows why).
//!
//! Health comes from sysinfo's cheap per-item refreshes (whole-machine CPU and memory, this
//! process only, one filesystem): about 0.2 ms per heartbeat, never a full process scan.

use std::time::Duration;

use holdfast_protocol::{Health, Heartbeat, JournalFigures, ManualNotice};

use crate::mode::{self, ManualState};
use crate::run::{Shared, now_ms};

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Reads the machine for heartbeats; keeps sysinfo's state between readings (CPU use is the
/// difference between two).
#[derive(Debug)]
pub struct Gauges {
    system: Option<sysinfo::System>,
    pid: Option<sysinfo::Pid>,
}

impl Default for Gauges {
    fn default() -> Self {
        Self { system: sysinfo::System::new().ok(), pid: sysinfo::get_current_pid().ok() }
    }
}

impl Gauges {
    fn health(&mut self, disk_free: Option<u64>) -> Health {
        let Some(sys) = self.system.as_mut() else { return Health { disk_free_bytes: disk_free, ..Health::default() } };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let agent_rss_bytes = match self.pid {
            Some(pid) => {
                sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), false);
                sys.process(pid).map_or(0, |p| p.memory())
            }
            None => 0,
        };
        Health {
            cpu_permille: (sys.global_cpu_usage() * 10.0).round().clamp(0.0, 1000.0) as u32,
            memory_used_bytes: sys.used_memory(),
            memory_total_bytes: sys.total_memory(),
            disk_free_bytes: disk_free,
            agent_rss_bytes,
        }
    }
}

/// Plant IT's manual state as the hub is told it.
pub fn notice(m: &ManualState) -> ManualNotice {
    ManualNotice {
        kind: m.kind.as_str().to_owned(),
        who: m.who.clone(),
        why: m.why.clone(),
        since_ms: m.since_ms,
        until_ms: m.until_ms,
    }
}

/// This moment's heartbeat, with `manual` as plant IT's state.
pub fn heartbeat(shared: &Shared, gauges: &mut Gauges, manual: Option<&ManualState>) -> Heartbeat {
    let now = now_ms();
    let manual = manual.filter(|m| !mode::expired(m, now));
    let usage = shared.journal.usage();
    Heartbeat {
        at_ms: now,
        mode: mode::mode(true, manual, now).as_str().to_owned(),
        manual: manual.map(notice),
        health: gauges.health(usage.disk_free),
        journal: JournalFigures {
            last_seq: *shared.journal.last_seq().borrow(),
            rows: usage.rows,
            bytes: usage.bytes,
            rejected: usage.rejected,
            rate_milli_per_s: (usage.rows_per_s * 1000.0).round().max(0.0) as u64,
        },
        diagnosis: shared.diagnosis.as_ref().map(|d| d.lock().expect("diagnosis lock").snapshot()),
    }
}
