//! A raw sync client: real QUIC and mutual TLS with whatever certificate a test hands it, and
//! whatever bytes it wants on the session's stream, to see how the hub answers.

use std::path::Path;
use std::time::Duration;

use holdfast_agent::config::HubConfig;
use holdfast_protocol::Message;
use holdfast_protocol::frame::Decoder;

/// An error with its sources, as one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Connects to the hub at `sync` as `plant` with `cert`/`key` (trusting `ca`), writes `bytes`
/// on a new stream (then finishes it if `finish`), and returns the hub's first message, or what
/// ended the connection.
pub async fn exchange(
    sync: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    plant: &str,
    bytes: &[u8],
    finish: bool,
) -> Result<Message, String> {
    let hub = HubConfig {
        addresses: vec![sync.to_owned()],
        server_name: "localhost".into(),
        ca: ca.to_owned(),
        cert: cert.to_owned(),
        key: key.to_owned(),
        idle_timeout: Duration::from_secs(30),
        upload_bytes_per_s: None,
    };
    let endpoint = holdfast_agent::uplink::endpoint(plant, &hub).expect("client endpoint");
    let conn = endpoint
        .connect(sync.parse().expect("sync address"), "localhost")
        .expect("connect")
        .await
        .map_err(|e| chain(&e))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| chain(&e))?;
    send.write_all(bytes).await.map_err(|e| chain(&e))?;
    if finish {
        send.finish().map_err(|e| chain(&e))?;
    }
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        match recv.read(&mut buf).await.map_err(|e| chain(&e))? {
            Some(n) => decoder.push(&buf[..n]),
            None => return Err("the hub ended the stream without a word".into()),
        }
        if let Some(msg) = decoder.next_message().map_err(|e| chain(&e))? {
            return Ok(msg);
        }
    }
}
