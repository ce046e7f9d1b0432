//! The webhook's parse-and-verify path on arbitrary input: the first line is taken as the
//! `X-Hub-Signature-256` header, the rest as the body. Each input goes through the
//! signature check as given, the parser alone, and the whole accept path with a valid
//! signature (so the parser sees bodies a forger could not reach). Nothing may panic.
#![no_main]

use leadpipe_core::accept::{WebhookSecrets, accept_delivery};
use leadpipe_core::memory::MemoryQueue;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SECRET: &[u8] = b"fuzz-app-secret";

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let header = std::str::from_utf8(header).ok();
    let _ = leadpipe_core::signature::verify_signature(SECRET, header, body);
    let _ = leadpipe_core::webhook::parse_delivery(body, time::OffsetDateTime::UNIX_EPOCH);

    let secrets = WebhookSecrets {
        app_secret: SecretString::from("fuzz-app-secret"),
        verify_token: SecretString::from("fuzz-verify"),
    };
    let queue = MemoryQueue::new();
    if let Ok(signature) = leadpipe_core::signature::sign(SECRET, body) {
        let _ = futures::executor::block_on(accept_delivery(
            &secrets,
            &queue,
            Some(&signature),
            body,
            time::OffsetDateTime::UNIX_EPOCH,
        ));
    }
});
