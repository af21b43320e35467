//! Scanner stations on the TCP line protocol. Each configured station is one listener: a line is
//! `<code>` or `<key> <code>`, the station's template turns it into an Odoo call, and the answer
//! `ACK <seq>` (or `ERR <reason>`) is written only after the journal committed the transaction.
//!
//! Every connection is bounded: lines longer than [`LINE_BYTES_MAX`] are refused and skipped,
//! invalid UTF-8 is refused, a connection idle for [`IDLE_TIMEOUT`] or too slow to take its
//! answers within [`WRITE_TIMEOUT`] is closed, and a station takes at most [`CONNECTIONS_MAX`]
//! connections. None of this affects other connections. Lines already buffered are journaled
//! together (up to [`LINES_PER_COMMIT_MAX`]) and answered in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use holdfast_protocol::{Operation, SourceKind, Transaction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::StationConfig;
use crate::journal::{Entry, JournalError};
use crate::run::{Shared, now_ms};
use crate::template::{ScanInput, parse_line};

/// Longest line, newline excluded.
pub const LINE_BYTES_MAX: usize = 1024;
/// Connections one station serves at once; more are answered `ERR busy` and closed.
pub const CONNECTIONS_MAX: usize = 64;
/// A connection that sends nothing this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A connection that does not take its answers within this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffered lines journaled in one request, at most.
pub const LINES_PER_COMMIT_MAX: usize = 256;
const READ_CHUNK_BYTES: usize = 4096;

/// Serves one station until `shutdown` flips.
pub async fn serve(
    shared: Arc<Shared>,
    station: Arc<StationConfig>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, peer)) = accepted else { continue };
                if !station.allow.iter().any(|net| net.contains(&peer.ip())) {
                    warn!(station = %station.name, %peer, "refused a connection from an address not allowed");
                    let msg = format!("ERR forbidden: {} may not use station {}\n", peer.ip(), station.name);
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(msg.as_bytes())).await;
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(b"ERR busy: too many connections, try again\n")).await;
                    continue;
                };
                let (shared, station, shutdown) = (shared.clone(), station.clone(), shutdown.clone());
                connections.spawn(async move {
                    handle(&shared, &station, stream, peer, shutdown).await;
                    drop(permit);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    connections.shutdown().await;
}

/// What one line came to, before the journal's answer.
enum Pending {
    Entry(usize),
    Refused(String),
}

async fn handle(
    shared: &Shared,
    station: &StationConfig,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut skipping = false;
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)) => r,
            _ = shutdown.changed() => return,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(b"ERR idle: closing\n")).await;
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut lines: Vec<Result<String, String>> = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if std::mem::take(&mut skipping) {
                continue;
            }
            let line = &line[..line.len() - 1];
            lines.push(if line.len() > LINE_BYTES_MAX {
                Err(format!("line too long: at most {LINE_BYTES_MAX} bytes"))
            } else {
                String::from_utf8(line.to_vec()).map_err(|_| "invalid UTF-8".to_owned())
            });
        }
        if buf.len() > LINE_BYTES_MAX && !skipping {
            // Answer now and drop the rest of this line as it arrives.
            lines.push(Err(format!("line too long: at most {LINE_BYTES_MAX} bytes")));
            skipping = true;
            buf.clear();
        } else if skipping {
            buf.clear();
        }
        for group in lines.chunks(LINES_PER_COMMIT_MAX) {
            let answers = commit_lines(shared, station, group).await;
            match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(answers.as_bytes())).await {
                Ok(Ok(())) => {}
                _ => {
                    info!(station = %station.name, %peer, "closed a connection that did not take its answers");
                    return;
                }
            }
        }
    }
}

/// Journals the valid lines of a group in one request; returns the answers, one line each.
async fn commit_lines(shared: &Shared, station: &StationConfig, lines: &[Result<String, String>]) -> String {
    let at_ms = now_ms();
    let occurred_at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).ok())
        .unwrap_or_default();
    let source = SourceKind::parse(&station.source).unwrap_or(SourceKind::Scanner);
    let mut entries = Vec::new();
    let mut pending = Vec::with_capacity(lines.len());
    for line in lines {
        let parsed = line.as_ref().map_err(Clone::clone).and_then(|l| {
            parse_line(l, station.qty_separator)
                .map_err(|e| e.to_string())
                .map(|p| (p.key.map(str::to_owned), p.code.to_owned(), p.qty))
        });
        let (key, code, qty) = match parsed {
            Ok(p) => p,
            Err(reason) => {
                pending.push(Pending::Refused(reason));
                continue;
            }
        };
        let scan = ScanInput {
            code: &code,
            key: key.as_deref(),
            qty,
            device: &station.device,
            station: &station.name,
            occurred_at: &occurred_at,
        };
        let call = station.template.render(&scan);
        let id = match &key {
            Some(k) => Transaction::keyed_id(&shared.plant, source, &station.device, k),
            None => uuid::Uuid::now_v7(),
        };
        let txn = Transaction {
            id,
            plant: shared.plant.clone(),
            source,
            device: station.device.clone(),
            key,
            order_key: station.order_key.as_ref().map_or_else(|| shared.plant.clone(), |k| k.replace("{code}", &code)),
            received_at_ms: at_ms,
            occurred_at_ms: Some(at_ms),
            op: Operation::OdooCall(call),
        };
        match txn.encode_body() {
            Ok(body) => {
                pending.push(Pending::Entry(entries.len()));
                entries.push(Entry::of(&txn, body));
            }
            Err(e) => pending.push(Pending::Refused(e.to_string())),
        }
    }
    let appended = if entries.is_empty() { Ok(Vec::new()) } else { shared.journal.append(entries).await };
    if let Ok(a) = &appended {
        shared.count_ingested(&format!("station:{}", station.name), a);
    }
    let mut out = String::new();
    for p in pending {
        let answer = match (&p, &appended) {
            (Pending::Refused(reason), _) => format!("ERR {reason}"),
            (Pending::Entry(i), Ok(a)) => format!("ACK {}", a[*i].seq),
            (Pending::Entry(_), Err(JournalError::Full(why))) => format!("ERR full: {why}"),
            (Pending::Entry(_), Err(e)) => format!("ERR journal: {e}"),
        };
        out.push_str(&answer);
        out.push('\n');
    }
    out
}
