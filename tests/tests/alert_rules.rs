//! The Prometheus alert rules in `deploy/prometheus/`: `promtool check rules` accepts them,
//! `promtool test rules` shows each alert firing on the series that should raise it, and every
//! metric they use is one the hub or the agent exports (ARCHITECTURE.md's list, which
//! `tests/metrics.rs` checks against the running binaries).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str], dir: &Path) -> String {
    let out =
        Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("promtool could not run ({e}): install Debian's prometheus package (.ci/run does)")
        });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_use_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("deploy/prometheus");
    let checked = promtool(&["check", "rules", "holdfast.rules.yml"], &dir);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "holdfast.rules.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let rules = std::fs::read_to_string(dir.join("holdfast.rules.yml")).unwrap();
    let used: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("holdfast_hub_") || w.starts_with("holdfast_agent_"))
        .collect();
    assert!(used.len() >= 12, "{used:?}");
    for name in used {
        assert!(architecture.contains(&format!("| `{name}` |")), "{name} is not a documented metric");
    }
}
