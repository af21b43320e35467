//! The `holdfast_inbox` addon's decision logic (`deploy/odoo/holdfast_inbox/logic.py`) under
//! pytest, so the README's test command covers it. `.ci/run` installs pytest where it is missing.

use std::path::Path;

#[test]
fn the_inbox_addons_decision_logic_passes_its_pytest_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "deploy/odoo/tests"])
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 (install Python 3)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("No module named pytest"), "install pytest: python3 -m pip install pytest\n{text}");
    assert!(out.status.success(), "{text}");
    let summary = text.lines().rev().find(|l| l.contains(" passed")).unwrap_or_default().to_owned();
    let passed: u32 = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(passed >= 8 && !summary.contains("failed"), "{text}");
}
