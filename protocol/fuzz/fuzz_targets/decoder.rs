//! Whatever bytes a peer sends, the frame decoder answers with messages or a typed error, never
//! a panic or an unbounded allocation; every message it accepts encodes back to one that
//! decodes the same; every record it carries is verified or refused by its checksum.
//!
//! Run (cargo-fuzz; `RUSTC_BOOTSTRAP=1` lets it use the stable toolchain's sanitizer flags):
//! `cd protocol && RUSTC_BOOTSTRAP=1 cargo fuzz run decoder fuzz/corpus/decoder fuzz/seeds/decoder -- -max_total_time=600`.
//! `fuzz/seeds/decoder` holds one frame per message of `tests/golden.rs`, each after a split byte.

#![no_main]

use holdfast_protocol::Message;
use holdfast_protocol::frame::{self, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the rest is split into two pushes, as a stream's reads would.
    let Some((first, rest)) = data.split_first() else { return };
    let split = usize::from(*first).min(rest.len());
    let mut decoder = Decoder::new();
    decoder.push(&rest[..split]);
    decoder.push(&rest[split..]);
    loop {
        match decoder.next_message() {
            Ok(Some(msg)) => {
                let again = frame::encode(&msg).expect("an accepted message encodes");
                let mut check = Decoder::new();
                check.push(&again);
                assert_eq!(check.next_message().expect("re-decodes"), Some(msg.clone()));
                if let Message::Batch(batch) = &msg {
                    for record in &batch.records {
                        let _ = record.verify();
                    }
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
