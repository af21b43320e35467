//! Bad input on the sync stream, from a client with a valid certificate: garbage, an oversized
//! frame, a truncated frame, undecodable CBOR, and messages out of turn. Each gets a typed error
//! and a closed session, nothing is stored, and the hub keeps serving another plant throughout.

use holdfast_protocol::frame;
use holdfast_protocol::msg::{Ack, Batch};
use holdfast_protocol::{ErrorCode, Message};
use serde_json::json;
use tests::harness::{Env, START_TIMEOUT, wait_for};
use tests::rawquic;

#[tokio::test]
async fn garbage_oversized_truncated_and_out_of_turn_input_is_refused_while_other_plants_go_on() {
    let env = Env::new(&["plant-a", "plant-b"]);
    let odoo = env.odoo_sim("odoo").await;
    let hub = env.hub(&odoo.url, "127.0.0.1:0").await;
    let sync = hub.field("sync");
    // plant-b: a real agent, uploading all along.
    let agent = env.agent("plant-b", &sync).await;
    let http = agent.field("http");
    let txn = |n: u64| json!({"source": "mes", "device": "d", "odoo": {"model": "res.users", "method": "context_get", "args": [], "kwargs": {"n": n}}});

    let certs = env.path().join("certs");
    let (ca, cert, key) = (certs.join("ca.pem"), certs.join("plant-a.pem"), certs.join("plant-a.key"));
    let frame_of = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let batch = frame::encode(&Message::Batch(Batch { records: vec![] })).unwrap();
    let ack = frame::encode(&Message::Ack(Ack { stored_seq: 1, applied_seq: 1 })).unwrap();
    let cases: Vec<(&str, Vec<u8>, bool, ErrorCode, String)> = vec![
        (
            "an oversized frame",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            false,
            ErrorCode::Malformed,
            "frame of 4294967295 bytes exceeds the limit of 8388608 bytes".into(),
        ),
        (
            "garbage in a frame",
            frame_of(b"\xde\xad\xbe\xef not cbor"),
            false,
            ErrorCode::Malformed,
            "CBOR decoding failed: unexpected type 0xde at position 0".into(),
        ),
        (
            "a truncated frame",
            frame_of(&[0u8; 100])[..40].to_vec(),
            true,
            ErrorCode::Malformed,
            "the stream ended inside a frame (40 bytes of it arrived)".into(),
        ),
        (
            "a batch before the hello",
            batch,
            false,
            ErrorCode::Malformed,
            "unexpected batch message before the hello".into(),
        ),
        ("an ack from the agent", ack, false, ErrorCode::Malformed, "unexpected ack message before the hello".into()),
    ];
    let mut n = 0;
    for (what, bytes, finish, code, says) in cases {
        let answer = rawquic::exchange(&sync, &ca, &cert, &key, "plant-a", &bytes, finish).await;
        match answer {
            Ok(Message::Error(e)) => {
                assert_eq!(e.code, code, "{what}: {}", e.message);
                assert!(e.message.contains(&says), "{what}: {}", e.message);
            }
            other => panic!("{what}: answered {other:?}"),
        }
        // Meanwhile plant-b's transactions keep arriving at the hub.
        n += 1;
        assert_eq!(env.post(&http, &json!([txn(n)])).await.0, 202);
        wait_for(START_TIMEOUT, "plant-b's transaction at the hub", || async {
            (env.agent_status(&http).await["hub"]["stored_seq"] == n).then_some(())
        })
        .await;
    }
    agent.stop().await;
    hub.stop().await;
    let db =
        rusqlite::Connection::open_with_flags(env.path().join("hub.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let plant_a: u64 = db.query_row("SELECT COUNT(*) FROM journals WHERE plant = 'plant-a'", [], |r| r.get(0)).unwrap();
    assert_eq!(plant_a, 0, "nothing of plant-a's abuse was stored");
}
