//! The agent's mode, as a pure function of the hub link and plant IT's manual state.
//!
//! `online` (hub link up, uploading), `offline` (hub unreachable, buffering), `manual_offline`
//! (plant IT switched the plant off: no uploads, the hub applies nothing more for the plant, the
//! link stays up so the hub can show it), `isolated` (manual, and no traffic at all). A manual
//! state carries who, why, since and an optional expiry; it persists in the journal and outranks
//! everything else.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualKind {
    /// No uploads; the link stays up.
    Offline,
    /// No traffic at all.
    Isolated,
}

impl ManualKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Isolated => "isolated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "offline" => Some(Self::Offline),
            "isolated" => Some(Self::Isolated),
            _ => None,
        }
    }
}

/// Plant IT's manual state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualState {
    pub kind: ManualKind,
    /// The local user who set it.
    pub who: String,
    pub why: String,
    pub since_ms: i64,
    /// When it ends by itself, if it does.
    pub until_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Online,
    Offline,
    ManualOffline,
    Isolated,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::ManualOffline => "manual_offline",
            Self::Isolated => "isolated",
        }
    }
}

/// Whether a manual state is over at `now_ms`.
pub fn expired(manual: &ManualState, now_ms: i64) -> bool {
    manual.until_ms.is_some_and(|until| now_ms >= until)
}

/// The mode at `now_ms`: a manual state outranks the link.
pub fn mode(link_up: bool, manual: Option<&ManualState>, now_ms: i64) -> Mode {
    match manual.filter(|m| !expired(m, now_ms)) {
        Some(ManualState { kind: ManualKind::Isolated, .. }) => Mode::Isolated,
        Some(ManualState { kind: ManualKind::Offline, .. }) => Mode::ManualOffline,
        None if link_up => Mode::Online,
        None => Mode::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manual(kind: ManualKind, until_ms: Option<i64>) -> ManualState {
        ManualState { kind, who: "ana".into(), why: "line maintenance".into(), since_ms: 1_000, until_ms }
    }

    #[test]
    fn manual_states_outrank_the_link_until_they_expire() {
        assert_eq!(mode(true, None, 0), Mode::Online);
        assert_eq!(mode(false, None, 0), Mode::Offline);
        let off = manual(ManualKind::Offline, Some(5_000));
        assert_eq!(mode(true, Some(&off), 4_999), Mode::ManualOffline);
        assert_eq!(mode(true, Some(&off), 5_000), Mode::Online, "expired at its deadline");
        let iso = manual(ManualKind::Isolated, None);
        assert_eq!(mode(true, Some(&iso), i64::MAX), Mode::Isolated, "no expiry: until plant IT switches it off");
        assert!(!expired(&iso, i64::MAX));
    }
}
