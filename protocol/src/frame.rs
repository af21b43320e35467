//! Length-prefixed framing: a 4-byte big-endian length, then that many bytes of CBOR [`Message`].
//!
//! A frame longer than [`FRAME_BYTES_MAX`] is refused before any of it is buffered, so a peer
//! cannot make the other side allocate without bound.

use crate::codec::{self, CodecError};
use crate::msg::Message;

/// Largest encoded message. A batch is built to stay well under it.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
const LEN_BYTES: usize = 4;

/// A frame could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Encodes a message as one frame.
pub fn encode(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let body = codec::to_vec(msg)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len: body.len(), max: FRAME_BYTES_MAX });
    }
    let mut out = Vec::with_capacity(LEN_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reassembles frames from a byte stream, whatever the chunking.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one has arrived. An error is final for the stream.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..LEN_BYTES].try_into().expect("four bytes")) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
        }
        if self.buf.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let msg = codec::from_slice(&self.buf[LEN_BYTES..LEN_BYTES + len]);
        self.buf.drain(..LEN_BYTES + len);
        Ok(Some(msg?))
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Ack;

    #[test]
    fn reassembles_frames_split_anywhere() {
        let a = Message::Ack(Ack { stored_seq: 7, applied_seq: 3 });
        let b = Message::Ack(Ack { stored_seq: 9, applied_seq: 9 });
        let mut bytes = encode(&a).unwrap();
        bytes.extend(encode(&b).unwrap());
        for split in 0..bytes.len() {
            let mut d = Decoder::new();
            d.push(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            d.push(&bytes[split..]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "split at {split}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn refuses_oversized_length_before_buffering_the_body() {
        let mut d = Decoder::new();
        d.push(&((FRAME_BYTES_MAX as u32) + 1).to_be_bytes());
        match d.next_message() {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, FRAME_BYTES_MAX + 1);
                assert_eq!(max, FRAME_BYTES_MAX);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn garbage_body_is_a_codec_error() {
        let mut d = Decoder::new();
        d.push(&3u32.to_be_bytes());
        d.push(&[0xff, 0x00, 0x13]);
        assert!(matches!(d.next_message(), Err(FrameError::Codec(_))));
    }
}
