//! The README's first command works: the demo tells its whole story (an outage of the primary
//! Odoo, the hold, a failover with the lost tail applied again, the waves) and its
//! reconciliation adds up, plant by plant.

use std::process::Command;

/// One plant's row of the reconciliation table.
#[derive(Debug)]
struct Row {
    via: String,
    acknowledged: u64,
    applied: u64,
    quarantined: u64,
    replayed: u64,
    lost: u64,
    duplicates: u64,
    in_order: String,
}

fn rows(stdout: &str) -> Vec<(String, Row)> {
    let table = stdout.split("5. Reconciliation").nth(1).expect("a reconciliation");
    table
        .lines()
        .filter(|l| l.trim_start().starts_with("plant-"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 9, "{l}");
            let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|_| panic!("a number in {l}"));
            let row = Row {
                via: f[1].into(),
                acknowledged: n(2),
                applied: n(3),
                quarantined: n(4),
                replayed: n(5),
                lost: n(6),
                duplicates: n(7),
                in_order: f[8].into(),
            };
            (f[0].to_owned(), row)
        })
        .collect()
}

#[test]
fn the_demo_tells_the_whole_story_and_its_reconciliation_adds_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast-demo")).output().expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // The story, in its order.
    let beats = [
        "primary Odoo: every connection refused",
        "platform_wide opened",
        "all 3 plants held",
        "operator: holdfast-hub incident failover",
        "operator: holdfast-hub reopen start",
        "replay done: ",
        "wave 1: draining: opened",
        "wave 2: draining: opened",
        "wave 3: draining: opened",
        "completed: every wave promoted",
    ];
    let mut at = 0;
    for beat in beats {
        let found = stdout[at..].find(beat).unwrap_or_else(|| panic!("{beat:?} after byte {at}:\n{stdout}"));
        at += found + beat.len();
    }
    let held_bar = |l: &str| l.trim_start().starts_with("plant-c [") && l.contains("backlog") && l.ends_with("held");
    assert!(stdout.lines().any(held_bar), "a backlog bar while held:\n{stdout}");

    let rows = rows(&stdout);
    let names: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["plant-a", "plant-b", "plant-c"], "{stdout}");
    let vias: Vec<&str> = rows.iter().map(|(_, r)| r.via.as_str()).collect();
    assert_eq!(vias, ["MQTT", "HTTP", "TCP"]);
    for (plant, r) in &rows {
        assert!(r.acknowledged > 0, "{plant}: {r:?}");
        assert_eq!(r.applied + r.quarantined, r.acknowledged, "{plant}: {r:?}");
        assert_eq!((r.lost, r.duplicates), (0, 0), "{plant}: {r:?}");
        assert_eq!(r.in_order, "yes", "{plant}: {r:?}");
        // The backup was taken while every plant was producing: each lost a tail, replayed.
        assert!(r.replayed > 0 && r.replayed < r.applied, "{plant}: {r:?}");
    }
    // The one transaction Odoo refuses (an order that does not exist) waits in quarantine.
    let quarantined: Vec<u64> = rows.iter().map(|(_, r)| r.quarantined).collect();
    assert_eq!(quarantined, [0, 1, 0]);
    assert!(stdout.contains("the old primary: 0 writes since the failover"), "{stdout}");
    assert!(stdout.trim_end().ends_with("nothing acknowledged was lost, nothing was applied twice."), "{stdout}");
}
