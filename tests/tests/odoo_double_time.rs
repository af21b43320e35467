//! The double on virtual time: its router driven in-process with tokio's clock paused, so
//! durations are exact and nothing waits for real. The login cooldown per client address, and
//! the capacity model offered twice what it can serve.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use serde_json::{Value, json};
use tests::odoo_sim::{self, SimConfig, capacity::Capacity};
use tokio::time::Instant;
use tower::ServiceExt;

/// One JSON-RPC call from `client`; the answer, or `None` when the connection broke.
async fn rpc(router: &Router, client: [u8; 4], service: &str, method: &str, args: Value) -> Option<Value> {
    let body = json!({"jsonrpc": "2.0", "method": "call", "id": 1,
                      "params": {"service": service, "method": method, "args": args}});
    let mut req = Request::post("/jsonrpc")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request");
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from((client, 40000))));
    let resp = router.clone().oneshot(req).await.expect("the router answers");
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.ok()?;
    Some(serde_json::from_slice(&bytes).expect("JSON"))
}

async fn login(router: &Router, client: [u8; 4], key: &str) -> Value {
    let sim = SimConfig::default();
    rpc(router, client, "common", "authenticate", json!([sim.database, sim.login, key, {}])).await.unwrap()["result"]
        .clone()
}

#[tokio::test(start_paused = true)]
async fn five_failed_logins_from_an_address_refuse_its_logins_for_sixty_seconds() {
    let router = odoo_sim::router(SimConfig::default());
    let good = SimConfig::default().api_key;
    let bad = "0000000000000000000000000000000000000000";
    let (gateway, other) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    for _ in 0..4 {
        assert_eq!(login(&router, gateway, bad).await, json!(false));
    }
    assert_eq!(login(&router, gateway, &good).await, json!(2), "four failures: no cooldown, and success resets");
    for _ in 0..5 {
        assert_eq!(login(&router, gateway, bad).await, json!(false));
    }
    assert_eq!(login(&router, gateway, &good).await, json!(false), "the right key, refused while cooling down");
    assert_eq!(login(&router, other, &good).await, json!(2), "per client address");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(login(&router, gateway, &good).await, json!(false), "59 s after the last failure");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(login(&router, gateway, &good).await, json!(2), "60 s after it");
    // A failure after the cooldown, with the count never reset by a success, starts it again.
    for _ in 0..5 {
        assert_eq!(login(&router, gateway, bad).await, json!(false));
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(login(&router, gateway, bad).await, json!(false));
    assert_eq!(login(&router, gateway, &good).await, json!(false), "the sixth failure restarted the 60 s");
}

/// Offered twice its capacity (4 workers × 20 ms: 200 calls a second; 400 a second offered
/// for 2 s), the double serves at 200 a second ±10%, and each call waits longer than the one
/// before it: the queue grows.
#[tokio::test(start_paused = true)]
async fn offered_twice_its_capacity_it_serves_at_workers_over_service_time_and_the_queue_grows() {
    let capacity = Capacity {
        workers: 4,
        per_call: Duration::from_millis(20),
        per_operation: Duration::ZERO,
        limit_time_real: Duration::from_secs(120),
    };
    let router = odoo_sim::router(SimConfig { capacity: Some(capacity), virtual_time: true, ..SimConfig::default() });
    let sim = SimConfig::default();
    let (calls, every) = (800u32, Duration::from_micros(2_500));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..calls {
        let router = router.clone();
        let args = json!([sim.database, odoo_sim::HUB_UID, sim.api_key, "res.users", "context_get", [], {}]);
        tasks.spawn(async move {
            let arrival = start + every * n;
            tokio::time::sleep_until(arrival).await;
            let answer = rpc(&router, [10, 0, 0, 1], "object", "execute_kw", args).await;
            assert_eq!(answer.expect("answered")["result"]["uid"], 2);
            (n, arrival, Instant::now())
        });
    }
    let mut done: Vec<(u32, Instant, Instant)> = tasks.join_all().await;
    done.sort_by_key(|d| d.0);
    let last = done.iter().map(|d| d.2).max().unwrap();
    let throughput = f64::from(calls) / (last - start).as_secs_f64();
    assert!((180.0..=220.0).contains(&throughput), "{throughput:.1} calls/s, expected 200 ±10%");
    let waits: Vec<Duration> = done.iter().map(|(_, arrival, end)| *end - *arrival - capacity.per_call).collect();
    assert!(
        waits[..40].iter().all(|w| *w < Duration::from_millis(120)),
        "the first calls barely wait: {:?}",
        &waits[..40]
    );
    let (early, late) = (mean(&waits[100..200]), mean(&waits[700..800]));
    assert!(late > early + Duration::from_millis(1_000), "queueing delay grows: {early:?} then {late:?}");
    assert!(waits.windows(100).all(|w| w[99] + Duration::from_millis(1) >= w[0]), "waits never shrink");
}

fn mean(d: &[Duration]) -> Duration {
    d.iter().sum::<Duration>() / d.len() as u32
}
