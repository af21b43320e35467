//! The hub's Kubernetes manifests, validated offline (`deploy/kubernetes/check.py`): core objects
//! against Kubernetes' schemas (kubernetes-validate, strict, any warning fails), Traefik's
//! resources against the JSON schemas in the repo, and what ties them together. The check is
//! shown to fail on a broken copy with the exact complaint; the hub.toml in the ConfigMap is a
//! config the hub accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Runs the check on `dir`: its exit code, stdout and stderr.
fn check(dir: &Path) -> (i32, String, String) {
    let out = Command::new("python3")
        .arg(manifests().join("check.py"))
        .arg(dir)
        .output()
        .expect("python3 (with kubernetes-validate, jsonschema and PyYAML: see .ci/run)");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_shipped_manifests_pass() {
    let (code, out, err) = check(&manifests());
    assert_eq!((code, out.as_str(), err.as_str()), (0, "ok: 11 core objects, 3 Traefik resources\n", ""));
}

#[test]
fn the_replicated_variant_passes_and_each_replica_needs_a_sync_route_of_its_own() {
    let (code, out, err) = check(&manifests().join("replicated"));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "ok: 16 core objects, 4 Traefik resources\n", ""));
    // A third replica without a route of its own; the SQLite variant scaled to two.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&manifests().join("replicated"), dir.path());
    edit(&dir.path().join("hub-statefulset.yaml"), "  replicas: 2\n", "  replicas: 3\n");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim_end(),
        "replica holdfast-hub-2 has no UDP route of its own (an IngressRouteUDP to a Service selecting its pod): \
         QUIC datagrams must reach the replica holding the connection"
    );
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&manifests(), dir.path());
    edit(&dir.path().join("hub-statefulset.yaml"), "  replicas: 1\n", "  replicas: 2\n");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim_end(), "the StatefulSet has 2 replicas on a SQLite store (store.path): one writer only");
}

#[test]
fn a_broken_copy_is_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&manifests(), dir.path());
    // A field Kubernetes does not know, and the UDP session timeout put on the route, where
    // Traefik has no such field (its CRD would prune it silently).
    edit(
        &dir.path().join("hub-service.yaml"),
        "  type: ClusterIP\n",
        "  type: ClusterIP\n  sessionAffinityTimeout: 60\n",
    );
    edit(&dir.path().join("traefik/ingressrouteudp.yaml"), "  entryPoints:", "  timeout: 60s\n  entryPoints:");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("ERROR "), "{err}");
    assert!(lines[0].contains("'sessionAffinityTimeout' was unexpected"), "{err}");
    assert_eq!(
        lines[1],
        "traefik/ingressrouteudp.yaml: IngressRouteUDP/holdfast-sync: spec: \
         Additional properties are not allowed ('timeout' was unexpected)"
    );

    // Valid one by one, wrong together: Traefik would forget a QUIC connection between packets,
    // and the API route names a port the Service does not have.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&manifests(), dir.path());
    edit(&dir.path().join("traefik/values.yaml"), "udp.timeout=60s", "udp.timeout=20s");
    edit(&dir.path().join("traefik/ingressroute.yaml"), "port: 8440", "port: 8443");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "traefik/ingressroute.yaml: IngressRoute/holdfast-api: Service 'holdfast-hub' has no TCP port 8443",
            "traefik/values.yaml: entry point 'holdfast-sync': the UDP session timeout (20 s) must be above the \
             hub's sync.idle_timeout (30 s), or Traefik drops live QUIC connections",
        ]
    );
}

/// The hub.toml of a ConfigMap, parsed with the secrets it reads put in a temporary folder.
fn configmap_config(file: &Path) -> holdfast_hub::config::Config {
    let text = std::fs::read_to_string(file).unwrap();
    let body = text.split_once("  hub.toml: |\n").expect("the hub.toml key").1;
    let toml: String = body
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    // The Odoo and audit keys are read while parsing: put them where the secrets are mounted.
    let dir = tempfile::tempdir().unwrap();
    let mut toml = toml;
    for (mounted, content) in [
        ("/etc/holdfast/odoo/api-key", "0f3b8e1c4d2a6f9e7b5c3a1d8e6f4b2c9a7d5e3f\n".to_owned()),
        ("/etc/holdfast/audit/audit.key", format!("{}\n", "a5".repeat(32))),
    ] {
        let file = dir.path().join(Path::new(mounted).file_name().unwrap());
        std::fs::write(&file, content).unwrap();
        toml = toml.replace(mounted, file.to_str().unwrap());
    }
    holdfast_hub::config::Config::parse(&toml, dir.path()).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[test]
fn the_configmaps_hub_toml_is_a_config_the_hub_accepts() {
    let cfg = configmap_config(&manifests().join("hub-config.yaml"));
    assert_eq!(cfg.sync.listen.port(), 4433);
    assert_eq!(cfg.api.listen.port(), 8440);
    assert_eq!(cfg.store.path.as_deref(), Some(Path::new("/var/lib/holdfast/hub.db")));
    assert_eq!(cfg.api.trusted_proxies.len(), 1);
}

#[test]
fn the_replicated_configmaps_hub_toml_is_a_config_the_hub_accepts() {
    let cfg = configmap_config(&manifests().join("replicated/hub-config.yaml"));
    assert_eq!(cfg.store.path, None);
    assert!(cfg.store.postgres.as_deref().unwrap().contains("sslmode=require"));
    assert_eq!(cfg.store.postgres_ca.as_deref(), Some(Path::new("/etc/holdfast/postgres/ca.crt")));
    assert_eq!(cfg.cluster.lease, std::time::Duration::from_secs(15));
    assert_eq!(cfg.cluster.advertise.as_deref(), Some("https://{name}.holdfast-hub-headless.holdfast.svc:8440"));
    assert_eq!(cfg.api.tokens.as_deref(), Some(Path::new("/etc/holdfast/tokens/api-tokens.json")));
}
