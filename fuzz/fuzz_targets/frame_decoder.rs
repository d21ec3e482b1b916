//! The frame decoder on arbitrary bytes: every outcome is a message or a typed
//! error, never a panic, and never an allocation past the limit.
#![no_main]

use std::sync::OnceLock;

use domain_proto::{FrameError, domain_data, encode_frame, read_message_or_eof, task};
use libfuzzer_sys::fuzz_target;

/// Small, so that the fuzzer also reaches the "too large" path.
const LIMIT: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

fn decode_all<M: prost::Message + Default + PartialEq>(data: &[u8]) {
    runtime().block_on(async {
        let mut reader = data;
        loop {
            match read_message_or_eof::<M, _>(&mut reader, LIMIT).await {
                Ok(Some(message)) => {
                    // Whatever decodes re-encodes to a frame that decodes to the same message.
                    let frame = encode_frame(&message).unwrap();
                    let again: M = domain_proto::read_message(&mut frame.as_slice(), usize::MAX).await.unwrap();
                    assert!(again == message);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, limit }) => {
                    assert!(len > limit as u64);
                    break;
                }
                Err(_) => break,
            }
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    match selector % 5 {
        0 => decode_all::<task::DomainClusterHandshakeRequest>(rest),
        1 => decode_all::<domain_data::UpsertMetadata>(rest),
        2 => decode_all::<domain_data::Metadata>(rest),
        3 => decode_all::<task::ConsumeDataInputV1>(rest),
        _ => decode_all::<task::Task>(rest),
    }
});
