//! The two sessions driven against each other over an in-memory link, on virtual time.
// Virtual time starts at an arbitrary real instant and only moves when a test moves it.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::txn::{OdooCall, Operation, SourceKind, Transaction};

fn record(seq: u64) -> Record {
    Transaction {
        id: Uuid::from_u128(seq as u128),
        plant: "plant-a".into(),
        source: SourceKind::Mes,
        device: "line-1".into(),
        key: None,
        order_key: "plant-a".into(),
        received_at_ms: 1_000 + seq as i64,
        occurred_at_ms: None,
        op: Operation::OdooCall(OdooCall {
            model: "res.users".into(),
            method: "context_get".into(),
            args: serde_json::json!([]),
            kwargs: Default::default(),
        }),
    }
    .to_record(seq)
    .unwrap()
}

/// One agent and one hub session with a journal and a store behind them.
struct Pair {
    now: Instant,
    journal: Vec<Record>,
    store: Vec<Record>,
    agent: AgentSession,
    hub: HubSession,
    agent_marks: Ack,
    max_in_flight: usize,
    closed: Vec<SessionError>,
    /// Where the hub's store stands (records stored or skipped as compacted).
    stored_point: u64,
    skipped: Vec<(u64, u64)>,
    heartbeats: Vec<Heartbeat>,
    plant_states: Vec<PlantState>,
}

impl Pair {
    fn new(journal_len: u64, cfg: AgentSessionConfig) -> Self {
        let now = Instant::now();
        let journal: Vec<Record> = (1..=journal_len).map(record).collect();
        let agent = AgentSession::new(cfg, now, Uuid::from_u128(7), journal_len, "test");
        Self {
            now,
            journal,
            store: Vec::new(),
            agent,
            hub: HubSession::new(),
            agent_marks: Ack { stored_seq: 0, applied_seq: 0 },
            max_in_flight: 0,
            closed: Vec::new(),
            stored_point: 0,
            skipped: Vec::new(),
            heartbeats: Vec::new(),
            plant_states: Vec::new(),
        }
    }

    fn reconnect(&mut self) {
        let cfg = AgentSessionConfig { window_batches: 3, batch_records_max: 50, ..Default::default() };
        let last_seq = self.journal.last().map_or(self.agent.last_seq, |r| r.seq);
        self.agent = AgentSession::new(cfg, self.now, Uuid::from_u128(7), last_seq, "test");
        self.hub = HubSession::new();
    }

    /// Runs both sides until neither has anything to do. `deliver_acks` false drops the hub's
    /// acknowledgements (a one-way outage after the handshake).
    fn run(&mut self, deliver_acks: bool) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.agent.poll_output() {
                progressed = true;
                match out {
                    AgentOutput::Send(m) => {
                        let m = crate::codec::from_slice(&crate::codec::to_vec(&m).unwrap()).unwrap();
                        self.hub.handle_message(self.now, m);
                    }
                    AgentOutput::Read { after_seq, max } => {
                        let rows: Vec<Record> =
                            self.journal.iter().filter(|r| r.seq > after_seq).take(max).cloned().collect();
                        self.agent.handle_records(self.now, rows);
                        self.max_in_flight = self.max_in_flight.max(self.agent.in_flight.len());
                    }
                    AgentOutput::Watermarks(a) => self.agent_marks = a,
                    AgentOutput::PlantState(p) => self.plant_states.push(p),
                    AgentOutput::Close(e) => self.closed.push(e),
                }
            }
            while let Some(out) = self.hub.poll_output() {
                progressed = true;
                match out {
                    HubOutput::Send(m) => {
                        if deliver_acks || !matches!(m, Message::Ack(_)) {
                            self.agent.handle_message(self.now, m);
                        }
                    }
                    HubOutput::Resume { .. } => {
                        self.hub.handle_resume(self.stored_point, self.stored_point / 2);
                    }
                    HubOutput::Store { records, .. } => {
                        let last = records.last().unwrap().seq;
                        assert_eq!(records[0].seq, self.stored_point + 1, "stores continue the stored point");
                        self.store.extend(records);
                        self.stored_point = last;
                        self.hub.handle_stored(last);
                    }
                    HubOutput::Heartbeat(h) => self.heartbeats.push(*h),
                    HubOutput::GatewayAudit { .. } => {}
                    HubOutput::Skip { from, through, .. } => {
                        assert_eq!(from, self.stored_point + 1);
                        self.skipped.push((from, through));
                        self.stored_point = through;
                        self.hub.handle_stored(through);
                    }
                    HubOutput::Close(e) => self.closed.push(e),
                }
            }
            if !progressed {
                return;
            }
        }
    }
}

#[test]
fn streams_a_whole_journal_in_order_within_the_window() {
    let cfg = AgentSessionConfig { window_batches: 3, batch_records_max: 50, ..Default::default() };
    let mut p = Pair::new(2_000, cfg);
    p.run(true);
    assert!(p.closed.is_empty(), "{:?}", p.closed);
    assert_eq!(p.store, p.journal);
    assert_eq!(p.agent_marks.stored_seq, 2_000);
    assert!(p.max_in_flight <= 3 && p.max_in_flight >= 1, "{}", p.max_in_flight);
}

#[test]
fn new_journal_rows_are_sent_as_they_arrive() {
    let mut p = Pair::new(10, AgentSessionConfig::default());
    p.run(true);
    assert_eq!(p.store.len(), 10);
    p.journal.extend((11..=15).map(record));
    p.agent.handle_journal(15);
    p.run(true);
    assert_eq!(p.store, p.journal);
    assert_eq!(p.agent_marks.stored_seq, 15);
}

#[test]
fn reconnect_resumes_from_the_stored_point_without_doubles() {
    let mut p = Pair::new(500, AgentSessionConfig { window_batches: 2, batch_records_max: 40, ..Default::default() });
    // The hub stores but its acknowledgements are lost: the agent has everything in flight.
    p.run(false);
    let stored_before = p.store.len();
    assert!(stored_before > 0 && stored_before < 500, "{stored_before}");
    assert_eq!(p.agent_marks.stored_seq, 0);
    p.reconnect();
    p.run(true);
    assert!(p.closed.is_empty(), "{:?}", p.closed);
    assert_eq!(p.store, p.journal, "every record stored exactly once, in order");
    assert_eq!(p.agent_marks.stored_seq, 500);
    assert_eq!(p.agent_marks.applied_seq, stored_before as u64 / 2);
}

#[test]
fn hub_drops_the_overlap_of_a_resent_batch() {
    let mut hub = HubSession::new();
    let now = Instant::now();
    hub.handle_message(
        now,
        Message::Hello(Hello {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: 0,
            journal_id: Uuid::nil(),
            last_seq: 10,
            agent_version: "t".into(),
            plant: None,
        }),
    );
    assert!(matches!(hub.poll_output(), Some(HubOutput::Resume { agent_last_seq: 10, .. })));
    hub.handle_resume(4, 2);
    assert!(matches!(
        hub.poll_output(),
        Some(HubOutput::Send(Message::Welcome(Welcome { stored_seq: 4, applied_seq: 2, .. })))
    ));
    hub.handle_message(now, Message::Batch(Batch { records: (3..=7).map(record).collect() }));
    match hub.poll_output() {
        Some(HubOutput::Store { records, .. }) => {
            assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6, 7])
        }
        other => panic!("expected a store, got {other:?}"),
    }
    hub.handle_stored(7);
    assert_eq!(hub.poll_output(), Some(HubOutput::Send(Message::Ack(Ack { stored_seq: 7, applied_seq: 2 }))));
    hub.handle_applied(6);
    assert_eq!(hub.poll_output(), Some(HubOutput::Send(Message::Ack(Ack { stored_seq: 7, applied_seq: 6 }))));
    hub.handle_applied(6);
    assert_eq!(hub.poll_output(), None, "no acknowledgement when nothing moved");
}

#[test]
fn hub_refuses_a_gap() {
    let mut hub = HubSession::new();
    let now = Instant::now();
    hub.handle_message(
        now,
        Message::Hello(Hello {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: 0,
            journal_id: Uuid::nil(),
            last_seq: 10,
            agent_version: "t".into(),
            plant: None,
        }),
    );
    hub.poll_output();
    hub.handle_resume(4, 0);
    hub.poll_output();
    hub.handle_message(now, Message::Batch(Batch { records: vec![record(6)] }));
    match hub.poll_output() {
        Some(HubOutput::Send(Message::Error(e))) => {
            assert_eq!(e.code, ErrorCode::OutOfOrder);
            assert_eq!(e.message, "batch starts at sequence 6, expected 5");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(hub.poll_output(), Some(HubOutput::Close(SessionError::OutOfOrder { expected: 5, got: 6 })));
}

#[test]
fn hub_refuses_a_corrupted_record_and_stores_nothing() {
    let mut p = Pair::new(3, AgentSessionConfig::default());
    p.journal[1].body[3] ^= 1;
    p.run(true);
    assert!(p.store.is_empty());
    assert!(matches!(p.closed[0], SessionError::Record(RecordError::Checksum { seq: 2, .. })), "{:?}", p.closed);
    assert!(matches!(&p.closed[1], SessionError::Remote { code: ErrorCode::Checksum, .. }), "{:?}", p.closed);
}

#[test]
fn version_mismatch_is_refused_with_a_typed_error() {
    let mut hub = HubSession::new();
    hub.handle_message(
        Instant::now(),
        Message::Hello(Hello {
            protocol_major: 2,
            protocol_minor: 0,
            journal_id: Uuid::nil(),
            last_seq: 0,
            agent_version: "9".into(),
            plant: None,
        }),
    );
    match hub.poll_output() {
        Some(HubOutput::Send(Message::Error(e))) => {
            assert_eq!(e.code, ErrorCode::VersionMismatch);
            assert_eq!(e.message, "protocol major version 2 is not supported (this side speaks 1)");
        }
        other => panic!("{other:?}"),
    }

    let now = Instant::now();
    let mut agent = AgentSession::new(AgentSessionConfig::default(), now, Uuid::nil(), 0, "t");
    agent.poll_output();
    agent.handle_message(
        now,
        Message::Welcome(Welcome { protocol_major: 3, protocol_minor: 0, stored_seq: 0, applied_seq: 0 }),
    );
    assert_eq!(agent.poll_output(), Some(AgentOutput::Close(SessionError::VersionMismatch { ours: 1, theirs: 3 })));
}

#[test]
fn silent_hub_times_out_on_virtual_time() {
    let t0 = Instant::now();
    let cfg = AgentSessionConfig { ack_timeout: Duration::from_secs(30), ..Default::default() };
    let mut agent = AgentSession::new(cfg, t0, Uuid::nil(), 5, "t");
    assert!(matches!(agent.poll_output(), Some(AgentOutput::Send(Message::Hello(_)))));
    assert_eq!(agent.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    agent.handle_message(
        t0,
        Message::Welcome(Welcome { protocol_major: 1, protocol_minor: 0, stored_seq: 0, applied_seq: 0 }),
    );
    assert_eq!(agent.poll_output(), Some(AgentOutput::Watermarks(Ack { stored_seq: 0, applied_seq: 0 })));
    assert_eq!(agent.poll_output(), Some(AgentOutput::Read { after_seq: 0, max: BATCH_RECORDS_MAX }));
    let t1 = t0 + Duration::from_secs(5);
    agent.handle_records(t1, (1..=5).map(record).collect());
    assert!(matches!(agent.poll_output(), Some(AgentOutput::Send(Message::Batch(_)))));
    assert_eq!(agent.poll_timeout(), Some(t1 + Duration::from_secs(30)));
    agent.handle_timeout(t1 + Duration::from_secs(29));
    assert_eq!(agent.poll_output(), None);
    agent.handle_timeout(t1 + Duration::from_secs(30));
    assert_eq!(agent.poll_output(), Some(AgentOutput::Close(SessionError::Timeout(Duration::from_secs(30)))));
    assert_eq!(agent.poll_timeout(), None);
}

#[test]
fn agent_refuses_a_hub_that_claims_more_than_the_journal_holds() {
    let now = Instant::now();
    let mut agent = AgentSession::new(AgentSessionConfig::default(), now, Uuid::nil(), 5, "t");
    agent.poll_output();
    agent.handle_message(
        now,
        Message::Welcome(Welcome { protocol_major: 1, protocol_minor: 0, stored_seq: 9, applied_seq: 0 }),
    );
    assert_eq!(agent.poll_output(), Some(AgentOutput::Close(SessionError::HubAhead { stored_seq: 9, last_seq: 5 })));
}

#[test]
fn agent_refuses_an_ack_beyond_what_it_sent() {
    let now = Instant::now();
    let mut agent = AgentSession::new(AgentSessionConfig::default(), now, Uuid::nil(), 5, "t");
    agent.poll_output();
    agent.handle_message(
        now,
        Message::Welcome(Welcome { protocol_major: 1, protocol_minor: 0, stored_seq: 0, applied_seq: 0 }),
    );
    while agent.poll_output().is_some() {}
    agent.handle_message(now, Message::Ack(Ack { stored_seq: 3, applied_seq: 0 }));
    assert_eq!(
        agent.poll_output(),
        Some(AgentOutput::Close(SessionError::BadAck { stored_seq: 3, sent_through: 0, previous: 0 }))
    );
}

#[test]
fn a_paused_session_uploads_nothing_until_resumed() {
    let mut p = Pair::new(30, AgentSessionConfig { batch_records_max: 10, ..Default::default() });
    p.agent.set_paused(true);
    p.run(true);
    assert!(p.store.is_empty(), "manual offline: nothing uploaded");
    assert!(p.agent.is_streaming(), "the link stays up");
    p.agent.set_paused(false);
    p.run(true);
    assert_eq!(p.store, p.journal);
}

/// The hub restored from a backup that knew records 1 to 30; the agent had compacted 1 to 80
/// after the hub (before the restore) reported them applied.
fn restored_hub_and_compacted_agent(compacted_through: u64) -> Pair {
    let mut p = Pair::new(100, AgentSessionConfig { window_batches: 2, batch_records_max: 25, ..Default::default() });
    p.run(true);
    assert_eq!(p.stored_point, 100);
    p.store.truncate(30);
    p.stored_point = 30;
    p.journal.retain(|r| r.seq > compacted_through);
    p.reconnect();
    p
}

#[test]
fn records_compacted_before_a_hub_restore_are_announced_and_the_rest_follows() {
    let mut p = restored_hub_and_compacted_agent(80);
    p.agent.handle_journal_applied(80);
    p.run(true);
    assert!(p.closed.is_empty(), "{:?}", p.closed);
    assert_eq!(p.skipped, vec![(31, 80)]);
    let stored: Vec<u64> = p.store.iter().map(|r| r.seq).collect();
    assert_eq!(stored, (1..=30).chain(81..=100).collect::<Vec<_>>());
    assert_eq!(p.agent_marks.stored_seq, 100);

    // Everything compacted: the agent says so without a record to send.
    let mut p = restored_hub_and_compacted_agent(100);
    p.agent.handle_journal_applied(100);
    p.run(true);
    assert!(p.closed.is_empty(), "{:?}", p.closed);
    assert_eq!((p.skipped.clone(), p.stored_point), (vec![(31, 100)], 100));
}

#[test]
fn a_missing_record_the_journal_never_compacted_is_a_fault_not_a_gap() {
    // The journal's applied watermark is 50: records up to 80 cannot have been compacted.
    let mut p = restored_hub_and_compacted_agent(80);
    p.agent.handle_journal_applied(50);
    p.run(true);
    assert!(p.skipped.is_empty());
    assert!(
        matches!(p.closed.first(), Some(SessionError::JournalGap { expected: 31, got: Some(81) })),
        "{:?}",
        p.closed
    );
}

#[test]
fn the_hub_refuses_a_compaction_beyond_the_agents_journal() {
    let mut hub = HubSession::new();
    let now = Instant::now();
    hub.handle_message(
        now,
        Message::Hello(Hello {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            journal_id: Uuid::nil(),
            last_seq: 10,
            agent_version: "t".into(),
            plant: None,
        }),
    );
    assert!(matches!(hub.poll_output(), Some(HubOutput::Resume { .. })));
    hub.handle_resume(5, 5);
    assert!(matches!(hub.poll_output(), Some(HubOutput::Send(Message::Welcome(_)))));
    hub.handle_message(now, Message::Compacted(Compacted { through: 11 }));
    assert_eq!(
        hub.poll_output(),
        Some(HubOutput::Send(Message::Error(ErrorMsg {
            code: ErrorCode::Malformed,
            message: "the agent says it compacted through 11, beyond its last sequence 10".into()
        })))
    );
}

#[test]
fn heartbeats_go_only_to_a_hub_that_speaks_them() {
    let mut p = Pair::new(3, AgentSessionConfig::default());
    let beat = Heartbeat { at_ms: 5, mode: "online".into(), ..Heartbeat::default() };
    p.agent.heartbeat(beat.clone());
    p.run(true);
    assert!(p.heartbeats.is_empty(), "nothing before the welcome");
    p.agent.heartbeat(beat.clone());
    p.run(true);
    assert_eq!(p.heartbeats, vec![beat.clone()]);

    // A 1.0 hub: no heartbeat, and a compacted stretch stays an error it can understand.
    let mut agent = AgentSession::new(AgentSessionConfig::default(), Instant::now(), Uuid::nil(), 10, "t");
    assert!(matches!(agent.poll_output(), Some(AgentOutput::Send(Message::Hello(_)))));
    agent.handle_message(
        Instant::now(),
        Message::Welcome(Welcome { protocol_major: PROTOCOL_MAJOR, protocol_minor: 0, stored_seq: 2, applied_seq: 2 }),
    );
    agent.handle_journal_applied(6);
    agent.heartbeat(beat);
    let mut outputs = Vec::new();
    while let Some(o) = agent.poll_output() {
        outputs.push(o);
    }
    assert!(!outputs.iter().any(|o| matches!(o, AgentOutput::Send(Message::Heartbeat(_)))), "{outputs:?}");
    agent.handle_records(Instant::now(), vec![record(7)]);
    let mut closed = None;
    while let Some(o) = agent.poll_output() {
        if let AgentOutput::Close(e) = o {
            closed = Some(e);
        }
    }
    assert!(matches!(closed, Some(SessionError::JournalGap { expected: 3, got: Some(7) })), "{closed:?}");
}

#[test]
fn notices_reach_an_agent_that_speaks_them_once_per_change() {
    let mut p = Pair::new(3, AgentSessionConfig::default());
    let state = PlantState {
        notices: vec![crate::msg::Notice { seq: 2, kind: "quarantined".into(), message: "UserError: no".into() }],
        reopening: Some(crate::msg::Reopening { state: "held".into(), wave: Some(2), eta_ms: None }),
    };
    p.hub.handle_notices(state.clone());
    p.run(true);
    assert!(p.plant_states.is_empty(), "nothing before the session streams");
    p.run(true);
    p.hub.handle_notices(state.clone());
    p.hub.handle_notices(state.clone());
    p.run(true);
    assert_eq!(p.plant_states, vec![state], "sent once while unchanged");
    p.hub.handle_notices(PlantState::default());
    p.run(true);
    assert_eq!(p.plant_states.last(), Some(&PlantState::default()), "an empty list clears them");
}
