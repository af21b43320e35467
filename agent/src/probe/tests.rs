use super::*;

#[test]
fn the_diagnosis_keeps_the_newest_changes_of_odoo_and_the_hub_link() {
    let mut log = DiagnosisLog::new();
    assert_eq!(log.snapshot().odoo, "unknown");
    log.link_changed(1, false, Some("timed out"));
    let down = Observation::unreachable("GET /web/health: connection refused");
    log.observed(2, &down, None);
    assert_eq!(log.snapshot().odoo, "unknown", "no change yet");
    log.observed(3, &down, Some(Verdict::Unreachable));
    let d = log.snapshot();
    assert_eq!(
        (d.odoo.as_str(), d.odoo_since_ms, d.odoo_detail.as_str()),
        ("unreachable", Some(3), "GET /web/health: connection refused")
    );
    assert_eq!(
        d.events.iter().map(|e| (e.at_ms, e.subject.as_str(), e.state.as_str())).collect::<Vec<_>>(),
        vec![(1, "hub_link", "disconnected"), (3, "odoo", "unreachable")]
    );
    for at in 10..100 {
        log.link_changed(at, at % 2 == 0, None);
    }
    let events = log.snapshot().events;
    assert_eq!(events.len(), DIAGNOSIS_EVENTS_MAX);
    assert_eq!((events[0].at_ms, events[49].at_ms), (50, 99), "the newest are kept");
}
