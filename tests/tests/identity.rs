//! Identity (I6): a gateway enrols with a key that never leaves it, a revoked plant is cut off
//! while connected and refused afterwards, and a spoofed hello, a foreign authority and an
//! expired certificate are refused with nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use holdfast_protocol::frame;
use holdfast_protocol::msg::{Hello, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use holdfast_protocol::{ErrorCode, Message};
use serde_json::{Value, json};
use tests::harness::{Env, START_TIMEOUT, bin, try_wait_for, wait_for};
use tests::rawquic;

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin(program)).args(args).output().expect("run");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn txn(n: u64) -> Value {
    json!({"source": "mes", "device": "line-3", "key": format!("id-{n}"),
           "odoo": {"model": "res.partner", "method": "write", "args": [[7], {"comment": format!("n{n}")}]}})
}

/// The hub's ledger rows for a plant, read from its store file.
fn ledger_rows(env: &Env, plant: &str) -> u64 {
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("hub store");
    db.query_row("SELECT COUNT(*) FROM ledger WHERE plant = ?1", [plant], |r| r.get(0)).expect("count")
}

fn audit_actions(env: &Env) -> Vec<(String, String, String)> {
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("hub store");
    db.prepare("SELECT actor, action, target FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// On the gateway: a key and a request. At the hub: the signature. Returns the gateway's dir.
fn enrol(env: &Env, plant: &str, gateway: &str) -> PathBuf {
    let dir = env.path().join(gateway);
    let (ok, out, err) = run("holdfast-agent", &["certs", "request", "--plant", plant, "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let key = dir.join(format!("{plant}.key"));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let csr = dir.join(format!("{plant}.csr"));
    assert!(!std::fs::read_to_string(&csr).unwrap().contains("PRIVATE KEY"), "the request carries no key");
    let (ok, out, err) = sign(env, plant, &csr, &dir.join(format!("{plant}.pem")));
    assert!(ok, "{out}{err}");
    dir
}

/// `holdfast-hub certs sign` with the environment's authority.
fn sign(env: &Env, plant: &str, csr: &Path, out: &Path) -> (bool, String, String) {
    let ca = env.path().join("certs");
    let [ca, csr, out] = [ca.as_path(), csr, out].map(|p| p.to_str().unwrap().to_owned());
    run("holdfast-hub", &["certs", "sign", "--dir", &ca, "--plant", plant, "--csr", &csr, "--out", &out])
}

/// Points the harness's agent config at an enrolled gateway's certificate and key.
fn use_gateway(env: &Env, plant: &str, gateway: &Path) {
    for ext in ["pem", "key"] {
        std::fs::copy(gateway.join(format!("{plant}.{ext}")), env.path().join(format!("certs/{plant}.{ext}"))).unwrap();
    }
}

#[tokio::test]
async fn a_gateway_enrols_with_its_own_key_and_a_revoked_plant_is_cut_off_within_ten_seconds() {
    let env = Env::new(&[]);
    let gateway = enrol(&env, "plant-a", "gateway-1");
    // A request for one plant is never signed for another.
    let csr = gateway.join("plant-a.csr");
    let (ok, _, err) = sign(&env, "plant-b", &csr, Path::new("/dev/null"));
    assert!(!ok);
    assert!(err.contains(&format!("{} asks for plant \"plant-a\", not \"plant-b\"", csr.display())), "{err}");
    use_gateway(&env, "plant-a", &gateway);

    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    assert_eq!(env.post(&http, &json!([txn(1)])).await.0, 202);
    wait_for(START_TIMEOUT, "the first transaction at the hub", || async {
        (env.agent_status(&http).await["hub"]["stored_seq"] == 1).then_some(())
    })
    .await;

    let agent_cfg = env.path().join("agent-plant-a.toml");
    let check = || {
        let out = Command::new(bin("holdfast-agent"))
            .args(["check-config", "--connect", "--config", agent_cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, said) = check();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("the hub accepted this gateway's certificate for plant plant-a"), "{said}");

    // Revocation goes through the running hub's API, with an admin token.
    let hub_cfg = env.path().join("hub.toml");
    let hub_cfg = hub_cfg.to_str().unwrap();
    let (ok, root, err) = run(
        "holdfast-hub",
        &["token", "create", "--name", "root", "--role", "admin", "--bootstrap", "--config", hub_cfg],
    );
    assert!(ok, "{root}{err}");
    let token = env.path().join("root.token");
    std::fs::write(&token, root.trim()).unwrap();
    let api = format!("http://{}", hub.field("api"));
    let revoke =
        ["certs", "revoke", "--config", hub_cfg, "--api", &api, "--plant", "plant-a", "--reason", "gateway stolen"];
    let (ok, out, err) = run("holdfast-hub", &revoke);
    assert!(!ok && err.contains("no token: pass --token-file or set HOLDFAST_TOKEN"), "{out}{err}");
    let (ok, out, err) = run("holdfast-hub", &[&revoke[..], &["--token-file", token.to_str().unwrap()]].concat());
    assert!(ok, "{out}{err}");
    // The live connection closes within 10 seconds of the revocation, and every reconnection is
    // refused with the reason.
    let refused = try_wait_for(Duration::from_secs(10), || async {
        let s = env.agent_status(&http).await;
        (s["hub"]["connected"] == false && s["hub"]["last_error"].as_str().is_some_and(|e| e.contains("revoked")))
            .then(|| s["hub"]["last_error"].as_str().unwrap_or_default().to_owned())
    })
    .await
    .unwrap_or_else(|| panic!("still connected 10 s after the revocation\n{}", hub.log_text()));
    assert!(refused.contains("gateway stolen"), "{refused}");
    assert_eq!(env.post(&http, &json!([txn(2)])).await.0, 202, "the agent still journals");
    let (code, said) = check();
    assert_eq!(code, Some(69), "{said}");
    assert!(
        said.contains("the hub refused this gateway: the certificates of plant plant-a issued before")
            && said.contains("(gateway stolen)"),
        "{said}"
    );
    assert_eq!(ledger_rows(&env, "plant-a"), 1, "nothing of a revoked plant is stored");
    let revoked: Vec<_> =
        audit_actions(&env).into_iter().filter(|(_, a, _)| a == "plant_certificates_revoked").collect();
    assert_eq!(revoked.len(), 1);
    assert!(revoked[0].0 == "token:root" && revoked[0].2.starts_with("plant-a/"), "{revoked:?}");
    agent.stop().await;

    // A certificate signed after the revocation works: the gateway enrols again.
    std::fs::remove_file(env.path().join("certs/plant-a.key")).unwrap();
    let gateway = enrol(&env, "plant-a", "gateway-2");
    use_gateway(&env, "plant-a", &gateway);
    let agent = env.agent("plant-a", &hub.field("sync")).await;
    let http = agent.field("http");
    wait_for(START_TIMEOUT, "the second transaction at the hub after enrolling again", || async {
        (env.agent_status(&http).await["hub"]["stored_seq"] == 2).then_some(())
    })
    .await;
    assert_eq!(ledger_rows(&env, "plant-a"), 2);
    agent.stop().await;
    hub.stop().await;
    let (ok, out, err) = run("holdfast-hub", &["audit", "verify", "--config", hub_cfg]);
    assert!(ok && out.contains("audit trail intact"), "{out}{err}");
}

/// A raw client with the given certificate: connects and says `hello`; returns the hub's first
/// answer, or the connection's error.
async fn hello_with(
    env: &Env,
    sync: &str,
    cert: &Path,
    key: &Path,
    plant: &str,
    hello: Hello,
) -> Result<Message, String> {
    let bytes = frame::encode(&Message::Hello(hello)).unwrap();
    rawquic::exchange(sync, &env.path().join("certs/ca.pem"), cert, key, plant, &bytes, false).await
}

fn hello(plant: Option<&str>) -> Hello {
    Hello {
        protocol_major: PROTOCOL_MAJOR,
        protocol_minor: PROTOCOL_MINOR,
        journal_id: uuid::Uuid::now_v7(),
        last_seq: 0,
        agent_version: "test".into(),
        plant: plant.map(str::to_owned),
    }
}

#[tokio::test]
async fn a_spoofed_hello_a_foreign_authority_and_an_expired_certificate_are_refused_and_write_nothing() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    let certs = env.path().join("certs");
    let (cert, key) = (certs.join("plant-a.pem"), certs.join("plant-a.key"));

    // The certificate names plant-a; the hello claims plant-b.
    match hello_with(&env, &sync, &cert, &key, "plant-a", hello(Some("plant-b"))).await {
        Ok(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Identity);
            assert_eq!(
                e.message,
                "the hello claims plant \"plant-b\" but this connection's certificate is for plant \"plant-a\""
            );
        }
        other => panic!("a spoofed hello was answered with {other:?}"),
    }
    let audit = audit_actions(&env);
    assert!(
        audit.contains(&("gateway:plant-a".into(), "hello_refused".into(), "plant-b".into())),
        "the refusal is audited: {audit:?}"
    );

    // A certificate from another authority, naming plant-a.
    let foreign = env.path().join("foreign");
    holdfast_hub::certs::init(&foreign, &["localhost".into()]).unwrap();
    let (fcert, fkey) = holdfast_hub::certs::issue(&foreign, "plant-a", 30).unwrap();
    let err = hello_with(&env, &sync, &fcert, &fkey, "plant-a", hello(Some("plant-a"))).await.unwrap_err();
    // Both authorities are named "Holdfast plant CA": the hub finds its own by name and the
    // signature does not verify.
    assert!(
        err.contains("handshake failed: error 51: invalid peer certificate: BadSignature"),
        "foreign authority: {err}"
    );

    // A certificate of our authority that expired yesterday.
    let expired = env.path().join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(certs.join(f), expired.join(f)).unwrap();
    }
    let now = time::OffsetDateTime::now_utc();
    let (ecert, ekey) = holdfast_hub::certs::issue_valid(
        &expired,
        "plant-a",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    let err = hello_with(&env, &sync, &ecert, &ekey, "plant-a", hello(Some("plant-a"))).await.unwrap_err();
    assert!(
        err.contains("handshake failed: error 45: invalid peer certificate: certificate expired"),
        "expired: {err}"
    );

    // Nothing of any of them was written, and the hub still serves its plant.
    assert_eq!(ledger_rows(&env, "plant-a"), 0);
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let journals: u64 = db.query_row("SELECT COUNT(*) FROM journals", [], |r| r.get(0)).unwrap();
    assert_eq!(journals, 0, "no journal was registered");
    match hello_with(&env, &sync, &cert, &key, "plant-a", hello(Some("plant-a"))).await {
        Ok(Message::Welcome(w)) => assert_eq!(w.stored_seq, 0),
        other => panic!("the rightful plant was answered with {other:?}"),
    }
    hub.stop().await;
}

#[tokio::test]
async fn check_config_connect_says_when_nothing_answers_over_udp() {
    let env = Env::new(&["plant-a"]);
    // Nothing listens on UDP port 9 (discard) here.
    let config = env.agent_config("plant-a", "127.0.0.1:9");
    let out = Command::new(bin("holdfast-agent"))
        .args(["check-config", "--connect", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("hub 127.0.0.1:9: no answer from 127.0.0.1:9 over UDP within 5 s: a firewall blocks UDP to port 9, or the hub is down"),
        "{err}"
    );
}
