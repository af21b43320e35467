//! Role-based access on every route of the hub's API: the test walks every operation of the
//! OpenAPI document the hub serves, with no token, a revoked token and each role, and checks
//! the answer against the role the document names (`x-holdfast-role`): 401 without a (known)
//! token, 403 below the role, past the guard at or above it. Then failed authentications from
//! one client address are cut off with 429 while other addresses carry on.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tests::harness::{Env, api_token, hub_cli};

fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip).timeout(Duration::from_secs(30)).build().unwrap()
}

async fn call(client: &reqwest::Client, method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == "POST" {
        req = req.json(&json!({}));
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 1,
        "operator" => 2,
        "admin" => 3,
        other => panic!("unknown role {other}"),
    }
}

#[tokio::test]
async fn every_route_answers_by_role_and_failed_logins_are_rate_limited_per_address() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    let hub = env.hub_from(&config).await;
    let api = hub.field("api");
    let base = format!("http://{api}");
    let (admin, admin_file) = env.bootstrap_admin(&config, &api).await;
    let local = client_from("127.0.0.1".parse().unwrap());
    let mut tokens = vec![("admin".to_owned(), admin.clone())];
    for (name, role) in [("ops", "operator"), ("watch", "viewer"), ("gone", "viewer")] {
        tokens.push((role.to_owned(), api_token(&api, &admin, name, role).await));
    }
    let revoked = tokens.pop().unwrap().1;
    let (code, _, err) =
        hub_cli(&config, &api, &["token", "revoke", "--name", "gone", "--reason", "left the team"], Some(&admin_file))
            .await;
    assert_eq!((code, err.as_str()), (0, "token \"gone\" revoked\n"));
    let (code, listed, err) = hub_cli(&config, &api, &["token", "list"], Some(&admin_file)).await;
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = listed.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["tests-viewer", "root", "ops", "watch"], "{listed}");
    let (status, body) = call(&local, "DELETE", &format!("{base}/api/v1/tokens/root?reason=oops"), Some(&admin)).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("refused")), "the last admin stays: {body}");

    // The document is public; every operation in it names its role.
    // So are the health checks (a Kubernetes probe carries no token), which say nothing else.
    for probe in ["healthz", "readyz"] {
        let resp = reqwest::get(format!("{base}/{probe}")).await.unwrap();
        assert_eq!(resp.status(), 200, "/{probe}");
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}), "/{probe}");
    }
    let doc: Value = reqwest::get(format!("{base}/api/v1/openapi.json")).await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let role = op["x-holdfast-role"].as_str().unwrap_or_else(|| panic!("{method} {path} names no role"));
            operations.push((method.to_uppercase(), path.clone(), role.to_owned()));
        }
    }
    assert!(operations.len() >= 18, "{operations:?}");
    for (m, p) in [("GET", "/api/v1/plants/{plant}"), ("GET", "/api/v1/audit"), ("DELETE", "/api/v1/tokens/{name}")] {
        assert!(operations.iter().any(|(om, op, _)| om == m && op == p), "{m} {p} in the document");
    }

    for (i, (method, path, role)) in operations.iter().enumerate() {
        let url = base.clone()
            + &path
                .replace("{plant}", "plant-a")
                .replace("{id}", "00000000-0000-0000-0000-000000000000")
                .replace("{name}", "nobody")
                .replace("{verb}", if path.starts_with("/api/v1/reopening") { "pause" } else { "hold" });
        // Each route's refused calls come from an address of their own: the walk stays under
        // the per-address budget of failed authentications.
        let stranger = client_from(format!("127.0.0.{}", 10 + i).parse().unwrap());
        for (who, token) in [("no token", None), ("a revoked token", Some(revoked.as_str()))] {
            let (status, body) = call(&stranger, method, &url, token).await;
            assert_eq!((status, &body["error"]["code"]), (401, &json!("unauthorized")), "{method} {path} with {who}");
        }
        for (held, token) in &tokens {
            let (status, body) = call(&local, method, &url, Some(token)).await;
            if rank(held) < rank(role) {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (403, &json!("forbidden")),
                    "{method} {path} ({role}) as {held}: {body}"
                );
            } else {
                assert!(
                    status != 401 && status != 403 && status != 429 && status < 500,
                    "{method} {path} ({role}) as {held}: {status} {body}"
                );
            }
        }
    }

    // Failed authentications from one address: the budget, then 429 for everything from it,
    // even a good token; other addresses are unaffected.
    let noisy = client_from("127.0.0.200".parse().unwrap());
    let status_url = format!("{base}/api/v1/status");
    let mut refused = 0;
    for _ in 0..40 {
        let (status, body) = call(&noisy, "GET", &status_url, Some("not-a-token")).await;
        match status {
            401 => refused += 1,
            429 => {
                assert_eq!(body["error"]["code"], "too_many_failures", "{body}");
                break;
            }
            other => panic!("{other} {body}"),
        }
    }
    assert_eq!(refused, holdfast_hub::api::FAILURES_PER_MINUTE, "401 until the budget is spent, then 429");
    let (status, body) = call(&noisy, "GET", &status_url, Some(&admin)).await;
    assert_eq!((status, &body["error"]["code"]), (429, &json!("too_many_failures")), "{body}");
    let (status, _) = call(&local, "GET", &status_url, Some(&admin)).await;
    assert_eq!(status, 200, "another address carries on");

    // The audit trail shows the token made and the one revoked, with who did it.
    let (status, audit) =
        call(&local, "GET", &format!("{base}/api/v1/audit?action=api_token_revoked"), Some(&tokens[2].1)).await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!((&entries[0]["actor"], &entries[0]["target"]), (&json!("token:root"), &json!("token:gone")));
    hub.stop().await;
}

/// Off loopback the API is TLS: with `api.cert` and `api.key` the hub answers HTTPS (here with
/// the hub's certificate for `localhost`, from the plants' authority), and plain HTTP gets no
/// answer.
#[tokio::test]
async fn the_api_speaks_tls_when_given_a_certificate() {
    let env = Env::new(&["plant-a"]);
    let odoo = env.odoo_sim("odoo").await;
    let config = env.hub_config(&odoo.url, "127.0.0.1:0", "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("plain_http = true\n"));
    std::fs::write(&config, text.replace("plain_http = true\n", "cert = \"certs/hub.pem\"\nkey = \"certs/hub.key\"\n"))
        .unwrap();
    let hub = env.hub_from(&config).await;
    let port = hub.field("api").rsplit(':').next().unwrap().to_owned();
    let ca = std::fs::read(env.path().join("certs/ca.pem")).unwrap();
    let client =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]).build().unwrap();
    let resp = client
        .get(format!("https://localhost:{port}/api/v1/status"))
        .bearer_auth(tests::harness::VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status: Value = resp.json().await.unwrap();
    assert!(status["odoo"]["verdict"].is_string(), "{status}");
    let plain = reqwest::Client::new().get(format!("http://localhost:{port}/api/v1/status")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP is not served");
    hub.stop().await;
}
