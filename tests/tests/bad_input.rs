//! Bad input gets a clear, typed answer and loses nothing: each case asserts the exact answer.

use serde_json::{Value, json};
use tests::harness::{Env, bin};

fn good() -> Value {
    json!({"source": "mes", "device": "line-1", "odoo": {"model": "res.users", "method": "context_get"}})
}

async fn raw_post(env: &Env, http: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = env
        .http
        .post(format!("http://{http}/v1/transactions"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST");
    (resp.status().as_u16(), resp.json().await.expect("a JSON answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_every_bad_request_with_a_typed_error_and_journals_nothing() {
    let env = Env::new(&["plant-a"]);
    // No hub is needed to take transactions: the agent journals them while it retries the link.
    let agent = env.agent("plant-a", "127.0.0.1:9").await;
    let http = agent.field("http");

    let (status, body) = raw_post(&env, &http, "text/plain", b"{}".to_vec()).await;
    assert_eq!(
        (status, body),
        (
            415,
            json!({"error": {"code": "unsupported_media_type", "message": "send Content-Type: application/json (got \"text/plain\")"}})
        )
    );

    let (status, body) = raw_post(&env, &http, "application/json", b"{\"source\": ".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
    assert_eq!(body["error"]["message"], "the body is not JSON: EOF while parsing a value at line 1 column 11");

    let (status, body) = env.post(&http, &json!([])).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": {"code": "empty_batch", "message": "the array holds no transactions"}}))
    );

    let (status, body) = env.post(&http, &Value::Array(vec![good(); 1001])).await;
    assert_eq!(
        (status, body),
        (
            413,
            json!({"error": {"code": "too_many_transactions", "message": "1001 transactions in one request; at most 1000"}})
        )
    );

    let big = json!({"source": "mes", "device": "d", "odoo": {"model": "res.users", "method": "write", "args": ["x".repeat(5 * 1024 * 1024)]}});
    let (status, body) = env.post(&http, &big).await;
    assert_eq!(
        (status, body),
        (
            413,
            json!({"error": {"code": "payload_too_large", "message": "the body exceeds 4194304 bytes; send fewer transactions per request"}})
        )
    );

    let mut batch = vec![good(), good(), good()];
    batch[2]["odoo"]["method"] = json!("_compute_price");
    let (status, body) = env.post(&http, &Value::Array(batch)).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": {"code": "invalid_transaction", "index": 2, "field": "odoo.method",
                   "message": "odoo.method: \"_compute_price\": Odoo refuses private methods (starting with '_') over RPC"}})
        )
    );

    let status = env.agent_status(&http).await;
    assert_eq!(status["journal"]["last_seq"], 0, "nothing of a refused request was journaled");

    let resp = env.http.get(format!("http://{http}/v1/transactions/not-a-uuid")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "invalid_id");
    let unknown = "0190a1b2-0000-7000-8000-000000000000";
    let resp = env.http.get(format!("http://{http}/v1/transactions/{unknown}")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": {"code": "not_found", "message": format!("transaction {unknown} is not in the journal: never received, or compacted after Odoo had it")}})
    );

    // The good ones still go through.
    let (status, body) = env.post(&http, &good()).await;
    assert_eq!(status, 202);
    assert_eq!(body["accepted"][0]["seq"], 1);
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_with_another_plants_certificate_refuses_to_start() {
    let env = Env::new(&["plant-a"]);
    let config = env.agent_config("plant-b", "127.0.0.1:9");
    // plant-b's config pointed at plant-a's certificate.
    let text = std::fs::read_to_string(&config).unwrap().replace("certs/plant-b.", "certs/plant-a.");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(bin("holdfast-agent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let cert = env.path().join("certs/plant-a.pem");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap(),
        format!(
            "holdfast-agent: {}: the certificate is for plant \"plant-a\", but this agent is configured for plant \"plant-b\"",
            cert.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_answers_503_with_retry_after_raises_an_alarm_and_keeps_what_it_has() {
    let env = Env::new(&["plant-a"]);
    let agent = env.agent_with("plant-a", "127.0.0.1:9", "rows_max = 5").await;
    let http = agent.field("http");
    let (status, body) = env.post(&http, &Value::Array(vec![good(); 4])).await;
    assert_eq!(status, 202, "{body}");

    let resp = env
        .http
        .post(format!("http://{http}/v1/transactions"))
        .json(&Value::Array(vec![good(); 2]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": {"code": "journal_full", "message":
            "the journal is full: it holds 4 transactions and its limit is 5 (journal.rows_max); nothing was journaled: resend after the backlog drains"}})
    );
    let status = env.agent_status(&http).await;
    assert_eq!(status["journal"]["rows"], 4, "everything acknowledged is still held");
    assert_eq!(status["alarms"][0]["name"], "journal_full");
    assert_eq!(status["capacity"]["rows_max"], 5);
    assert!(status["capacity"]["time_to_full_s"].is_u64(), "{status}");
    // What fits is still taken.
    assert_eq!(env.post(&http, &good()).await.0, 202);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_tokens_and_idempotency_keys() {
    let env = Env::new(&["plant-a"]);
    let token = "hft_test_token_for_line_3";
    let digest = holdfast_agent::http::token_digest(token);
    let tokens = format!("[[http.tokens]]\nname = \"mes-line-3\"\nsha256 = \"{digest}\"\n");
    let agent = env.agent_with("plant-a", "127.0.0.1:9", &tokens).await;
    let http = agent.field("http");
    let url = format!("http://{http}/v1/transactions");

    let resp = env.http.post(&url).json(&good()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": {"code": "unauthorized", "message": "send Authorization: Bearer <producer token>"}})
    );
    let resp = env.http.post(&url).bearer_auth("hft_guess").json(&good()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["message"],
        "the producer token is not one this gateway accepts"
    );

    let send = |body: Value, key: Option<&'static str>| {
        let mut req = env.http.post(&url).bearer_auth(token).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = send(good(), Some("line-3-000042")).await;
    assert_eq!(status, 202);
    let (_, again) = send(good(), Some("line-3-000042")).await;
    assert_eq!(again["accepted"][0]["duplicate"], true, "the header made it a keyed transaction");
    assert_eq!(again["accepted"][0]["seq"], first["accepted"][0]["seq"]);
    let (status, body) = send(Value::Array(vec![good()]), Some("k")).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("idempotency_key_with_array")));
    let mut keyed = good();
    keyed["key"] = json!("other");
    let (status, body) = send(keyed, Some("line-3-000043")).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": {"code": "idempotency_key_mismatch", "message": "the Idempotency-Key header \"line-3-000043\" and the body's key \"other\" differ"}})
        )
    );
    agent.stop().await;
}
