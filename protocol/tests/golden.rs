//! Golden bytes for every message of the session: a change here is a wire change, and must be
//! either compatible (a new optional field, which older peers ignore) or a new major version.

use holdfast_protocol::{
    Ack, Batch, ErrorCode, ErrorMsg, Hello, Message, OdooCall, Operation, Record, Scan, SourceKind, Transaction,
    Welcome, codec, frame,
};
use serde_json::json;
use uuid::Uuid;

fn odoo_txn() -> Transaction {
    Transaction {
        id: Transaction::keyed_id("plant-a", SourceKind::Mes, "line-3", "WO-1"),
        plant: "plant-a".into(),
        source: SourceKind::Mes,
        device: "line-3".into(),
        key: Some("WO-1".into()),
        order_key: "mo:WH/MO/01187".into(),
        received_at_ms: 1_795_680_000_000,
        occurred_at_ms: Some(1_795_679_700_000),
        op: Operation::OdooCall(OdooCall {
            model: "mrp.production".into(),
            method: "write".into(),
            args: json!([[{"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/01187"]]}}], {"qty_producing": 5.0}]),
            kwargs: serde_json::Map::new(),
        }),
    }
}

fn scan_txn() -> Transaction {
    Transaction {
        id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        plant: "plant-a".into(),
        source: SourceKind::Barcode,
        device: "dock-1".into(),
        key: None,
        order_key: "plant-a".into(),
        received_at_ms: 1_795_680_000_001,
        occurred_at_ms: None,
        op: Operation::Scan(Scan { code: "5901234123457".into() }),
    }
}

fn messages() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello",
            Message::Hello(Hello {
                protocol_major: 1,
                protocol_minor: 0,
                journal_id: Uuid::from_u128(0xabcdef),
                last_seq: 1200,
                agent_version: "0.1.0".into(),
                plant: None,
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome { protocol_major: 1, protocol_minor: 0, stored_seq: 1180, applied_seq: 1100 }),
        ),
        (
            "batch",
            Message::Batch(Batch {
                records: vec![odoo_txn().to_record(1181).unwrap(), scan_txn().to_record(1182).unwrap()],
            }),
        ),
        ("ack", Message::Ack(Ack { stored_seq: 1182, applied_seq: 1181 })),
        (
            "error",
            Message::Error(ErrorMsg {
                code: ErrorCode::OutOfOrder,
                message: "batch starts at sequence 6, expected 5".into(),
            }),
        ),
    ]
}

const GOLDEN: &[(&str, &str)] = &[
    (
        "hello",
        "a16568656c6c6fa56e70726f746f636f6c5f6d616a6f72016e70726f746f636f6c5f6d696e6f72006a6a6f75726e616c5f69645000000000000000000000000000abcdef686c6173745f7365711904b06d6167656e745f76657273696f6e65302e312e30",
    ),
    (
        "welcome",
        "a16777656c636f6d65a46e70726f746f636f6c5f6d616a6f72016e70726f746f636f6c5f6d696e6f72006a73746f7265645f73657119049c6b6170706c6965645f73657119044c",
    ),
    (
        "batch",
        "a1656261746368a1677265636f72647382a36373657119049d64626f647959011ea96269645052fa4ee73c4d59a59c21463ed6943fa165706c616e7467706c616e742d6166736f75726365636d657366646576696365666c696e652d33636b657964574f2d31696f726465725f6b65796e6d6f3a57482f4d4f2f30313138376e72656365697665645f61745f6d731b000001a216de58006e6f636375727265645f61745f6d731b000001a216d9c420626f70a1696f646f6f5f63616c6ca4656d6f64656c6e6d72702e70726f64756374696f6e666d6574686f6465777269746564617267738281a16424726566a266646f6d61696e8183646e616d65613d6b57482f4d4f2f3031313837656d6f64656c6e6d72702e70726f64756374696f6ea16d7174795f70726f647563696e67fb4014000000000000666b7761726773a0636372631a6d1fa213a36373657119049e64626f6479589ca9626964500190000000007000800000000000000165706c616e7467706c616e742d6166736f7572636567626172636f64656664657669636566646f636b2d31636b6579f6696f726465725f6b657967706c616e742d616e72656365697665645f61745f6d731b000001a216de58016e6f636375727265645f61745f6d73f6626f70a1647363616ea164636f64656d35393031323334313233343537636372631af4ae2c58",
    ),
    ("ack", "a16361636ba26a73746f7265645f73657119049e6b6170706c6965645f73657119049d"),
    (
        "error",
        "a1656572726f72a264636f64656c6f75745f6f665f6f72646572676d65737361676578266261746368207374617274732061742073657175656e636520362c2065787065637465642035",
    ),
];

#[test]
fn every_message_encodes_to_its_golden_bytes_and_back() {
    let mut printed = String::new();
    for (name, msg) in messages() {
        let bytes = codec::to_vec(&msg).unwrap();
        printed.push_str(&format!("(\"{name}\", \"{}\"),\n", hex(&bytes)));
        let back: Message = codec::from_slice(&bytes).unwrap();
        assert_eq!(back, msg, "{name} round trip");
    }
    for (name, msg) in messages() {
        let bytes = codec::to_vec(&msg).unwrap();
        let golden = GOLDEN.iter().find(|(n, _)| *n == name).map(|(_, h)| *h);
        assert_eq!(golden, Some(hex(&bytes).as_str()), "{name}: encoding changed; all now:\n{printed}");
    }
}

#[test]
fn record_bodies_have_golden_checksums() {
    let records: Vec<Record> = vec![odoo_txn().to_record(1).unwrap(), scan_txn().to_record(2).unwrap()];
    let crcs: Vec<u32> = records.iter().map(|r| r.crc).collect();
    assert_eq!(crcs, GOLDEN_CRCS, "body checksums changed: {crcs:#010x?}");
    for r in &records {
        r.verify().unwrap();
    }
}

const GOLDEN_CRCS: [u32; 2] = [0x6d1f_a213, 0xf4ae_2c58];

#[test]
fn unknown_fields_from_a_newer_peer_are_ignored() {
    // A newer hub adds an optional field to its acknowledgement; this peer still reads it.
    let newer = json!({"ack": {"stored_seq": 5, "applied_seq": 4, "eta_s": 30}});
    let bytes = codec::to_vec(&newer).unwrap();
    let msg: Message = codec::from_slice(&bytes).unwrap();
    assert_eq!(msg, Message::Ack(Ack { stored_seq: 5, applied_seq: 4 }));
}

#[test]
fn unknown_error_codes_decode_as_unknown() {
    let newer = json!({"error": {"code": "quota_exceeded", "message": "slow down"}});
    let msg: Message = codec::from_slice(&codec::to_vec(&newer).unwrap()).unwrap();
    assert_eq!(msg, Message::Error(ErrorMsg { code: ErrorCode::Unknown, message: "slow down".into() }));
}

#[test]
fn a_frame_is_the_length_then_the_message() {
    let msg = Message::Ack(Ack { stored_seq: 1, applied_seq: 0 });
    let f = frame::encode(&msg).unwrap();
    let body = codec::to_vec(&msg).unwrap();
    assert_eq!(&f[..4], &(body.len() as u32).to_be_bytes());
    assert_eq!(&f[4..], &body[..]);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
