//! Arbitrary bytes, split at arbitrary points, through the connection's
//! session (`shardfeed::session`), against a real store.
//!
//! Input layout: the first byte says how many of the following bytes are
//! chunk sizes; the rest is what the client sends, cut into chunks of those
//! sizes (cycled). Checks (`testing::Offline::answers`): no panic, every
//! answer written is a complete, well-framed HTTP/1.1 response, nothing
//! follows an answer that says `Connection: close`, and the connection
//! closes exactly after such an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfeed::feed::{Pool, StoreBuilder};
use shardfeed::http::Limits;
use shardfeed::session::Session;
use shardfeed::testing::{run_offline, LocalBackend};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 16).min(rest.len());
    let (sizes, payload) = rest.split_at(n);
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < payload.len() {
        let size = if sizes.is_empty() { payload.len() } else { 1 + sizes[i % sizes.len()] as usize * 4 };
        let end = (at + size).min(payload.len());
        chunks.push(&payload[at..end]);
        at = end;
        i += 1;
    }

    let mut builder = StoreBuilder::default();
    for user in 0..8u32 {
        builder.push_user(user, (0..user * 3).map(|i| user * 1000 + i)).unwrap();
    }
    let limits = Limits {
        max_head: 512,
        max_request_line: 256,
        max_body: 64,
        ..Limits::DEFAULT
    };
    let backend = LocalBackend::new(builder.build(Pool::new([90, 91, 92])));
    let mut session = Session::new(backend, limits, 4, 4096);
    let done = run_offline(&mut session, chunks);
    if let Err(why) = done.answers() {
        panic!("{why}");
    }
});
