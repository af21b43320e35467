//! The sans-IO sync session, one type per side.
//!
//! Neither side reads a clock or touches a socket. The shell feeds in what happened
//! (`handle_*`, with `now` passed in) and carries out what the session asks (`poll_output`),
//! waking it at `poll_timeout`. The agent side decides what to send and when a session is dead;
//! the hub side decides what may be stored (checksums, contiguity) and when to acknowledge.
//! Neither side acknowledges anything itself: the hub's shell reports a durable store with
//! [`HubSession::handle_stored`], and only then does an [`Ack`] go out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::msg::{
    Ack, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, Batch, Compacted, ErrorCode, ErrorMsg, GatewayAudit, Heartbeat, Hello,
    Message, PROTOCOL_MAJOR, PROTOCOL_MINOR, PlantState, Welcome,
};
use crate::txn::{Record, RecordError};

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the peer refused the session ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("protocol major version {theirs} is not supported (this side speaks {ours})")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("unexpected {message} message {state}")]
    OutOfTurn { message: &'static str, state: &'static str },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("batch starts at sequence {got}, expected {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the hub reports {stored_seq} stored but this journal only reached {last_seq}")]
    HubAhead { stored_seq: u64, last_seq: u64 },
    #[error("the hub acknowledged {stored_seq}, beyond the {sent_through} sent, or went backwards from {previous}")]
    BadAck { stored_seq: u64, sent_through: u64, previous: u64 },
    #[error("the journal has no record {expected} to send (the journal returned {got:?})")]
    JournalGap { expected: u64, got: Option<u64> },
    #[error("the agent says it compacted through {through}, beyond its last sequence {last_seq}")]
    BadCompacted { through: u64, last_seq: u64 },
    #[error("no answer from the peer within {0:?}")]
    Timeout(Duration),
}

impl SessionError {
    /// The code sent to the peer when this side ends the session.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Remote { code, .. } => *code,
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::OutOfTurn { .. }
            | Self::HubAhead { .. }
            | Self::BadAck { .. }
            | Self::JournalGap { .. }
            | Self::BadCompacted { .. }
            | Self::Timeout(_) => ErrorCode::Malformed,
            Self::Record(_) => ErrorCode::Checksum,
            Self::OutOfOrder { .. } => ErrorCode::OutOfOrder,
        }
    }

    fn to_message(&self) -> Message {
        Message::Error(ErrorMsg { code: self.code(), message: self.to_string() })
    }
}

/// Tuning of the agent side.
#[derive(Clone, Debug)]
pub struct AgentSessionConfig {
    /// Batches sent and not yet acknowledged, at most.
    pub window_batches: usize,
    /// Records per batch, at most (never above [`BATCH_RECORDS_MAX`]).
    pub batch_records_max: usize,
    /// How long the hub may take to welcome or acknowledge before the session is declared dead.
    pub ack_timeout: Duration,
    /// The plant the agent is configured for, said in the hello (the hub refuses a hello whose
    /// plant is not its certificate's).
    pub plant: Option<String>,
}

impl Default for AgentSessionConfig {
    fn default() -> Self {
        Self {
            window_batches: 16,
            batch_records_max: BATCH_RECORDS_MAX,
            ack_timeout: Duration::from_secs(30),
            plant: None,
        }
    }
}

/// What the agent's shell must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentOutput {
    /// Write this message to the stream.
    Send(Message),
    /// Read up to `max` consecutive journal records after `after_seq` and pass them to
    /// [`AgentSession::handle_records`].
    Read { after_seq: u64, max: usize },
    /// The hub's watermarks moved: persist them in the journal.
    Watermarks(Ack),
    /// What the hub says of the plant's transactions (quarantines): the shell keeps it for
    /// status and the fate of each transaction.
    PlantState(PlantState),
    /// The session is over; the shell closes the connection and reconnects with backoff.
    Close(SessionError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentState {
    AwaitingWelcome { since: Instant },
    Streaming,
    Closed,
}

/// The agent's end of the sync session.
#[derive(Debug)]
pub struct AgentSession {
    cfg: AgentSessionConfig,
    state: AgentState,
    last_seq: u64,
    sent_through: u64,
    stored_seq: u64,
    applied_seq: u64,
    reading: bool,
    /// Plant IT switched the plant to manual offline: the link stays up, nothing is uploaded.
    paused: bool,
    /// The hub's protocol minor version, from its welcome: messages added later are not sent
    /// to a hub that would not understand them.
    hub_minor: u16,
    /// The journal may have deleted records up to here (the applied watermark it keeps): a
    /// record missing below it was compacted, one missing above it is a fault.
    compactable_through: u64,
    /// Last sequence of each unacknowledged batch, with when it was sent.
    in_flight: VecDeque<(u64, Instant)>,
    out: VecDeque<AgentOutput>,
}

impl AgentSession {
    /// Starts a session on a fresh connection: the first output is the [`Hello`].
    pub fn new(cfg: AgentSessionConfig, now: Instant, journal_id: Uuid, last_seq: u64, agent_version: &str) -> Self {
        let hello = Hello {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            journal_id,
            last_seq,
            agent_version: agent_version.to_owned(),
            plant: cfg.plant.clone(),
        };
        let mut out = VecDeque::new();
        out.push_back(AgentOutput::Send(Message::Hello(hello)));
        Self {
            cfg,
            state: AgentState::AwaitingWelcome { since: now },
            last_seq,
            sent_through: 0,
            stored_seq: 0,
            applied_seq: 0,
            reading: false,
            paused: false,
            hub_minor: 0,
            compactable_through: 0,
            in_flight: VecDeque::new(),
            out,
        }
    }

    /// Sends the gateway's audit records, if the session is streaming and the hub speaks 1.1.
    pub fn audit(&mut self, audit: GatewayAudit) {
        if self.state == AgentState::Streaming && self.hub_minor >= 1 && !audit.records.is_empty() {
            self.out.push_back(AgentOutput::Send(Message::GatewayAudit(audit)));
        }
    }

    /// Sends a heartbeat, if the session is streaming and the hub speaks 1.1 or later.
    pub fn heartbeat(&mut self, heartbeat: Heartbeat) {
        if self.state == AgentState::Streaming && self.hub_minor >= 1 {
            self.out.push_back(AgentOutput::Send(Message::Heartbeat(Box::new(heartbeat))));
        }
    }

    /// The journal's own applied watermark: it may have compacted records up to it.
    pub fn handle_journal_applied(&mut self, applied_seq: u64) {
        self.compactable_through = self.compactable_through.max(applied_seq);
    }

    pub fn is_streaming(&self) -> bool {
        self.state == AgentState::Streaming
    }

    /// Stops (or resumes) uploading; batches already sent are still acknowledged.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        self.pump();
    }

    pub fn watermarks(&self) -> Ack {
        Ack { stored_seq: self.stored_seq, applied_seq: self.applied_seq }
    }

    /// The journal assigned sequences up to `last_seq`.
    pub fn handle_journal(&mut self, last_seq: u64) {
        self.last_seq = self.last_seq.max(last_seq);
        self.pump();
    }

    /// A message arrived from the hub.
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        if self.state == AgentState::Closed {
            return;
        }
        let result = match (self.state, msg) {
            (_, Message::Error(e)) => Err(SessionError::Remote { code: e.code, message: e.message }),
            (AgentState::AwaitingWelcome { .. }, Message::Welcome(w)) => self.on_welcome(w),
            (AgentState::Streaming, Message::Ack(a)) => self.on_ack(now, a),
            (AgentState::Streaming, Message::PlantState(p)) => {
                self.out.push_back(AgentOutput::PlantState(p));
                Ok(())
            }
            (state, other) => Err(SessionError::OutOfTurn {
                message: other.name(),
                state: if matches!(state, AgentState::Streaming) { "while streaming" } else { "before the welcome" },
            }),
        };
        match result {
            Ok(()) => self.pump(),
            Err(e) => self.close(e, false),
        }
    }

    /// The journal's answer to a [`AgentOutput::Read`].
    pub fn handle_records(&mut self, now: Instant, records: Vec<Record>) {
        self.reading = false;
        if self.state != AgentState::Streaming {
            return;
        }
        let expected = self.sent_through + 1;
        let first = records.first().map(|r| r.seq);
        // Records the hub asks for that the journal compacted (a hub restored from an older
        // backup): say so, then go on after them.
        let gap_end = match first {
            Some(f) if f > expected => Some(f - 1),
            None if self.last_seq >= expected => Some(self.last_seq),
            _ => None,
        };
        if let Some(through) = gap_end {
            // A 1.0 hub cannot take the announcement: the gap stays an error for it.
            if through > self.compactable_through || self.hub_minor < 1 {
                return self.close(SessionError::JournalGap { expected, got: first }, true);
            }
            self.out.push_back(AgentOutput::Send(Message::Compacted(Compacted { through })));
            self.sent_through = through;
            if records.is_empty() {
                return self.pump();
            }
        }
        let expected = self.sent_through + 1;
        if first != Some(expected) {
            return self.close(SessionError::JournalGap { expected, got: first }, true);
        }
        let mut batch = Vec::with_capacity(records.len());
        let mut bytes = 0;
        for (i, record) in records.into_iter().enumerate() {
            if record.seq != expected + i as u64 {
                return self
                    .close(SessionError::JournalGap { expected: expected + i as u64, got: Some(record.seq) }, true);
            }
            if !batch.is_empty() && (bytes + record.body.len() > BATCH_BYTES_MAX || batch.len() >= self.batch_max()) {
                break;
            }
            bytes += record.body.len();
            batch.push(record);
        }
        let last = batch.last().map(|r| r.seq).expect("at least one record");
        self.sent_through = last;
        self.in_flight.push_back((last, now));
        self.out.push_back(AgentOutput::Send(Message::Batch(Batch { records: batch })));
        self.pump();
    }

    /// Time passed; checks the welcome and acknowledgement deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.close(SessionError::Timeout(self.cfg.ack_timeout), false);
        }
    }

    pub fn poll_output(&mut self) -> Option<AgentOutput> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            AgentState::AwaitingWelcome { since } => Some(since + self.cfg.ack_timeout),
            AgentState::Streaming => self.in_flight.front().map(|(_, sent)| *sent + self.cfg.ack_timeout),
            AgentState::Closed => None,
        }
    }

    fn batch_max(&self) -> usize {
        self.cfg.batch_records_max.clamp(1, BATCH_RECORDS_MAX)
    }

    fn on_welcome(&mut self, w: Welcome) -> Result<(), SessionError> {
        if w.protocol_major != PROTOCOL_MAJOR {
            return Err(SessionError::VersionMismatch { ours: PROTOCOL_MAJOR, theirs: w.protocol_major });
        }
        if w.stored_seq > self.last_seq {
            return Err(SessionError::HubAhead { stored_seq: w.stored_seq, last_seq: self.last_seq });
        }
        self.state = AgentState::Streaming;
        self.hub_minor = w.protocol_minor;
        self.sent_through = w.stored_seq;
        self.set_watermarks(Ack { stored_seq: w.stored_seq, applied_seq: w.applied_seq.min(w.stored_seq) });
        Ok(())
    }

    fn on_ack(&mut self, _now: Instant, a: Ack) -> Result<(), SessionError> {
        if a.stored_seq > self.sent_through || a.stored_seq < self.stored_seq || a.applied_seq > a.stored_seq {
            return Err(SessionError::BadAck {
                stored_seq: a.stored_seq,
                sent_through: self.sent_through,
                previous: self.stored_seq,
            });
        }
        while self.in_flight.front().is_some_and(|(last, _)| *last <= a.stored_seq) {
            self.in_flight.pop_front();
        }
        self.set_watermarks(a);
        Ok(())
    }

    fn set_watermarks(&mut self, a: Ack) {
        if a != self.watermarks() || a.stored_seq == 0 {
            self.stored_seq = a.stored_seq;
            self.applied_seq = a.applied_seq.max(self.applied_seq.min(a.stored_seq));
            self.out.push_back(AgentOutput::Watermarks(self.watermarks()));
        }
    }

    /// Asks the journal for the next batch when the window has room.
    fn pump(&mut self) {
        if self.state == AgentState::Streaming
            && !self.paused
            && !self.reading
            && self.sent_through < self.last_seq
            && self.in_flight.len() < self.cfg.window_batches.max(1)
        {
            self.reading = true;
            self.out.push_back(AgentOutput::Read { after_seq: self.sent_through, max: self.batch_max() });
        }
    }

    fn close(&mut self, e: SessionError, tell_peer: bool) {
        self.state = AgentState::Closed;
        if tell_peer {
            self.out.push_back(AgentOutput::Send(e.to_message()));
        }
        self.out.push_back(AgentOutput::Close(e));
    }
}

/// What the hub's shell must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubOutput {
    /// Write this message to the stream.
    Send(Message),
    /// Look up the resume point of this plant's journal and pass it to [`HubSession::handle_resume`].
    Resume { journal_id: Uuid, agent_last_seq: u64 },
    /// Store these records durably (checksums verified, contiguous), then call
    /// [`HubSession::handle_stored`].
    Store { journal_id: Uuid, records: Vec<Record> },
    /// The agent compacted the records after the hub's stored point up to `through`: record the
    /// gap (audited, an alarm), move the stored point there, then call
    /// [`HubSession::handle_stored`].
    Skip { journal_id: Uuid, from: u64, through: u64 },
    /// The agent's heartbeat: the shell keeps it for operators and acts on its manual state.
    Heartbeat(Box<Heartbeat>),
    /// The gateway's audit records: the shell adds those it has not seen to the audit trail.
    GatewayAudit { journal_id: Uuid, audit: GatewayAudit },
    /// The session is over; the shell closes the connection.
    Close(SessionError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HubState {
    AwaitingHello,
    Resuming { journal_id: Uuid },
    Streaming { journal_id: Uuid },
    Closed,
}

/// The hub's end of the sync session, for one plant whose identity the shell took from the
/// peer's certificate.
#[derive(Debug)]
pub struct HubSession {
    state: HubState,
    /// Highest sequence handed to the store (stored or being stored).
    accepted_through: u64,
    /// The last sequence the agent's hello reported.
    agent_last_seq: u64,
    /// The agent's protocol minor version, from its hello.
    agent_minor: u16,
    /// The notices last sent.
    notices_sent: Option<PlantState>,
    acked: Ack,
    out: VecDeque<HubOutput>,
}

impl Default for HubSession {
    fn default() -> Self {
        Self::new()
    }
}

impl HubSession {
    pub fn new() -> Self {
        Self {
            state: HubState::AwaitingHello,
            accepted_through: 0,
            agent_last_seq: 0,
            agent_minor: 0,
            notices_sent: None,
            acked: Ack { stored_seq: 0, applied_seq: 0 },
            out: VecDeque::new(),
        }
    }

    /// The journal this session streams, once the agent said hello.
    pub fn journal_id(&self) -> Option<Uuid> {
        match self.state {
            HubState::Resuming { journal_id } | HubState::Streaming { journal_id } => Some(journal_id),
            _ => None,
        }
    }

    pub fn handle_message(&mut self, _now: Instant, msg: Message) {
        if self.state == HubState::Closed {
            return;
        }
        let result = match (self.state, msg) {
            (_, Message::Error(e)) => {
                self.state = HubState::Closed;
                self.out.push_back(HubOutput::Close(SessionError::Remote { code: e.code, message: e.message }));
                return;
            }
            (HubState::AwaitingHello, Message::Hello(h)) => self.on_hello(h),
            (HubState::Streaming { journal_id }, Message::Batch(b)) => self.on_batch(journal_id, b),
            (HubState::Streaming { journal_id }, Message::Compacted(c)) => self.on_compacted(journal_id, c),
            (HubState::Streaming { journal_id }, Message::GatewayAudit(audit)) => {
                self.out.push_back(HubOutput::GatewayAudit { journal_id, audit });
                Ok(())
            }
            (HubState::Streaming { .. }, Message::Heartbeat(h)) => {
                self.out.push_back(HubOutput::Heartbeat(h));
                Ok(())
            }
            (state, other) => Err(SessionError::OutOfTurn {
                message: other.name(),
                state: match state {
                    HubState::AwaitingHello => "before the hello",
                    HubState::Resuming { .. } => "before the welcome",
                    _ => "while streaming",
                },
            }),
        };
        if let Err(e) = result {
            self.close(e);
        }
    }

    /// The stored resume point of the journal named in the hello.
    pub fn handle_resume(&mut self, stored_seq: u64, applied_seq: u64) {
        let HubState::Resuming { journal_id } = self.state else { return };
        self.state = HubState::Streaming { journal_id };
        self.accepted_through = stored_seq;
        self.acked = Ack { stored_seq, applied_seq };
        self.out.push_back(HubOutput::Send(Message::Welcome(Welcome {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            stored_seq,
            applied_seq,
        })));
    }

    /// The store committed every record up to `stored_seq`.
    pub fn handle_stored(&mut self, stored_seq: u64) {
        if self.state == HubState::Closed || stored_seq <= self.acked.stored_seq {
            return;
        }
        self.acked.stored_seq = stored_seq;
        self.out.push_back(HubOutput::Send(Message::Ack(self.acked)));
    }

    /// The applier moved this journal's `applied_seq`.
    pub fn handle_applied(&mut self, applied_seq: u64) {
        let applied_seq = applied_seq.min(self.acked.stored_seq);
        if !matches!(self.state, HubState::Streaming { .. }) || applied_seq <= self.acked.applied_seq {
            return;
        }
        self.acked.applied_seq = applied_seq;
        self.out.push_back(HubOutput::Send(Message::Ack(self.acked)));
    }

    pub fn poll_output(&mut self) -> Option<HubOutput> {
        self.out.pop_front()
    }

    /// The hub's notices for this journal: sent when streaming to an agent that speaks 1.1 or
    /// later, and only when they differ from the last sent.
    pub fn handle_notices(&mut self, state: PlantState) {
        if !matches!(self.state, HubState::Streaming { .. }) || self.agent_minor < 1 {
            return;
        }
        if self.notices_sent.as_ref() != Some(&state) {
            self.notices_sent = Some(state.clone());
            self.out.push_back(HubOutput::Send(Message::PlantState(state)));
        }
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), SessionError> {
        if h.protocol_major != PROTOCOL_MAJOR {
            return Err(SessionError::VersionMismatch { ours: PROTOCOL_MAJOR, theirs: h.protocol_major });
        }
        self.state = HubState::Resuming { journal_id: h.journal_id };
        self.agent_last_seq = h.last_seq;
        self.agent_minor = h.protocol_minor;
        self.out.push_back(HubOutput::Resume { journal_id: h.journal_id, agent_last_seq: h.last_seq });
        Ok(())
    }

    fn on_compacted(&mut self, journal_id: Uuid, c: Compacted) -> Result<(), SessionError> {
        if c.through > self.agent_last_seq {
            return Err(SessionError::BadCompacted { through: c.through, last_seq: self.agent_last_seq });
        }
        if c.through > self.accepted_through {
            self.out.push_back(HubOutput::Skip { journal_id, from: self.accepted_through + 1, through: c.through });
            self.accepted_through = c.through;
        }
        Ok(())
    }

    fn on_batch(&mut self, journal_id: Uuid, batch: Batch) -> Result<(), SessionError> {
        for record in &batch.records {
            record.check()?;
        }
        // A resend after a reconnect may overlap what is already stored: drop the overlap.
        let fresh: Vec<Record> = batch.records.into_iter().filter(|r| r.seq > self.accepted_through).collect();
        for (i, record) in fresh.iter().enumerate() {
            let expected = self.accepted_through + 1 + i as u64;
            if record.seq != expected {
                return Err(SessionError::OutOfOrder { expected, got: record.seq });
            }
        }
        if let Some(last) = fresh.last() {
            self.accepted_through = last.seq;
            self.out.push_back(HubOutput::Store { journal_id, records: fresh });
        }
        Ok(())
    }

    fn close(&mut self, e: SessionError) {
        self.state = HubState::Closed;
        self.out.push_back(HubOutput::Send(e.to_message()));
        self.out.push_back(HubOutput::Close(e));
    }
}

#[cfg(test)]
mod tests;
