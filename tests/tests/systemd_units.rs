//! The shipped systemd units (`deploy/systemd/`): `systemd-analyze verify` finds nothing to say
//! (with `ExecStart` pointed at the binaries this build made), and `systemd-analyze security
//! --offline=true` rates each unit's exposure at most 1.5.

use std::path::Path;
use std::process::Command;

use tests::harness::bin;

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_units_verify_clean_and_expose_at_most_1_5() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["holdfast-agent", "holdfast-hub"] {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/systemd/{name}.service"));
        let text = std::fs::read_to_string(&shipped).unwrap();
        let installed = format!("ExecStart=/usr/bin/{name} ");
        assert!(text.contains(&installed), "{name}: ExecStart runs the packaged binary");
        assert!(text.contains("Type=notify\n") && text.contains("Restart=on-failure\n"), "{name}");
        let unit = dir.path().join(format!("{name}.service"));
        std::fs::write(&unit, text.replace(&installed, &format!("ExecStart={} ", bin(name).display()))).unwrap();

        let (ok, said) = analyze(&["verify"], &unit);
        assert!(ok && said.trim().is_empty(), "{name}: systemd-analyze verify:\n{said}");

        let (ok, said) = analyze(&["security", "--offline=true"], &unit);
        assert!(ok, "{name}: {said}");
        let level: f64 = said
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?.1.split_once(": ")?.1.split(' ').next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("{name}: no exposure level in\n{said}"));
        assert!(level <= 1.5, "{name}: exposure {level}\n{said}");
    }
}
