//! The README's first command works: the demo tells its story to the end.

use std::process::Command;

#[test]
fn the_demo_runs_to_the_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast-demo")).output().expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("POST /v1/transactions -> 202, 12 accepted"), "{stdout}");
    assert!(stdout.contains("\"duplicate\":true"), "{stdout}");
    assert!(
        stdout.contains("Odoo holds 18 transactions, each exactly once; the last one set qty_producing = 10.0"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("Done."), "{stdout}");
}
