//! Property tests: the feed store against a plain reference model, and the
//! connection's answer loop on arbitrary bytes split at arbitrary points (a
//! bounded, CI-sized sibling of `fuzz/fuzz_targets/answer_loop.rs`).

use std::collections::HashMap;

use proptest::prelude::*;
use shardfeed::cursor::Cursor;
use shardfeed::feed::{Pool, StoreBuilder, Unserved};
use shardfeed::http::Limits;
use shardfeed::session::Session;
use shardfeed::testing::{run_offline, LocalBackend};

/// The store's contract, written the plain way: lists, a served count per
/// user, and a pool walked from a cursor with `contains` checks.
struct Model {
    feeds: HashMap<u32, Vec<u32>>,
    served: HashMap<u32, usize>,
    pool: Vec<u32>,
    cursor: usize,
}

impl Model {
    /// The page for `user`, from `at` (position, pool offset) if given,
    /// and the (position, pool offset) after it.
    fn page(&mut self, user: u32, size: usize, at: Option<(u32, u32)>) -> (Vec<u32>, u32, u32) {
        let mut page = Vec::new();
        let mut position = 0;
        if let Some(items) = self.feeds.get(&user) {
            let served = self.served.entry(user).or_insert(0);
            let from = at.map_or(*served, |(p, _)| (p as usize).min(items.len()));
            let take = size.min(items.len() - from);
            page.extend_from_slice(&items[from..from + take]);
            position = from + take;
            // Never backwards.
            *served = (*served).max(position);
        }
        let n = self.pool.len();
        let mut at_pool = match at {
            Some((_, pool)) if n > 0 => pool as usize % n,
            Some(_) => 0,
            None => self.cursor,
        };
        let mut examined = 0;
        while page.len() < size && examined < n {
            let item = self.pool[at_pool];
            if !page.contains(&item) {
                page.push(item);
            }
            at_pool = (at_pool + 1) % n;
            examined += 1;
        }
        if at.is_none() {
            self.cursor = at_pool;
        }
        (page, position as u32, at_pool as u32)
    }
}

fn dedup_keep_first(items: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for &i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Pages with and without cursors: `how` 0-1 no cursor, 2 a cursor an
    /// earlier answer carried (a retry, or a step back), 3 the same of
    /// another feed version (ignored), 4 a position anywhere (beyond the
    /// list too), 5 a peek first, which must show the page that follows.
    #[test]
    fn store_matches_the_reference_model(
        feeds in prop::collection::vec(prop::collection::vec(0u32..60, 0..25), 1..12),
        pool in prop::collection::vec(0u32..60, 0..15),
        requests in prop::collection::vec((0u32..15, 1usize..30, 0u8..6, any::<u32>()), 1..150),
    ) {
        let mut builder = StoreBuilder::default();
        let mut model = Model {
            feeds: HashMap::new(),
            served: HashMap::new(),
            pool: dedup_keep_first(&pool),
            cursor: 0,
        };
        for (user, items) in feeds.iter().enumerate() {
            builder.push_user(user as u32, items.iter().copied()).unwrap();
            model.feeds.insert(user as u32, items.clone());
        }
        let mut store = builder.build(Pool::new(pool.iter().copied()));
        let version = store.cursor(0).version;
        let mut issued: Vec<Cursor> = Vec::new();
        let mut page = Vec::new();
        for (user, size, how, pick) in requests {
            let old = (!issued.is_empty()).then(|| issued[pick as usize % issued.len()]);
            let (user, at) = match (how, old) {
                (2, Some(c)) => (c.user, Some(c)),
                (3, Some(c)) => (c.user, Some(Cursor { version: c.version ^ 1, ..c })),
                (4, _) => (user, Some(Cursor { user, version, position: pick % 40, pool: pick })),
                _ => (user, None),
            };
            let honoured = at.filter(|c| c.version == version).map(|c| (c.position, c.pool));
            let (want, position, pool_at) = model.page(user, size, honoured);
            let before = store.counters();
            let mut peeked = Vec::new();
            let peek = (how == 5).then(|| store.peek_page(user, size, &mut peeked));
            let got = store.page(user, size, at, &mut page, true);
            if let Some(peek) = peek {
                prop_assert_eq!(peek, got, "a peek shows the page that follows");
                prop_assert_eq!(&peeked, &page);
            }
            match got {
                Ok(next) => {
                    let after = store.counters();
                    prop_assert_eq!(&page, &want);
                    prop_assert_eq!(next, Cursor { user, version, position, pool: pool_at });
                    let unknown = after.unknown_users - before.unknown_users;
                    prop_assert_eq!(unknown == 1, !model.feeds.contains_key(&user));
                    let served = after.personalized_items + after.fallback_items
                        - before.personalized_items - before.fallback_items;
                    prop_assert_eq!(served as usize, page.len());
                    issued.push(next);
                }
                Err(Unserved::NothingToServe) => prop_assert!(want.is_empty()),
                Err(Unserved::Overloaded | Unserved::NotOwner | Unserved::Stopping) => {
                    prop_assert!(false, "only a shard decides these, never the store")
                }
            }
        }
        // Every personalized item was served at most once, in order, when
        // no cursor went back; with cursors, progress is the furthest end.
        for (user, items) in &model.feeds {
            prop_assert_eq!(
                store.remaining(*user).unwrap(),
                &items[model.served.get(user).copied().unwrap_or(0)..]
            );
        }
    }

    #[test]
    fn answer_loop_survives_arbitrary_bytes_and_splits(
        bytes in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(1usize..400, 1..8),
        seeds in prop::collection::vec(
            prop::sample::select(vec![
                &b"GET /feed/1?size=3 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                &b"GET /feed/2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"[..],
                &b"GET /stats HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"[..],
                &b"\r\n"[..],
                &b"Content-Length: 9\r\n"[..],
                &b"Transfer-Encoding: chunked\r\n"[..],
                &b"HEAD /feed/3 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                &b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                &b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                &b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"[..],
                &b"Connection: close\r\n"[..],
                &b"GET /feed/1?size=2&cursor=0123abc HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                &b"HEAD /feed/2?cursor=&size=1 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            ]),
            0..6,
        ),
    ) {
        // Well-formed pieces spliced into the noise reach deeper states.
        let mut input = bytes.clone();
        for (i, seed) in seeds.iter().enumerate() {
            let at = (i * 997) % (input.len() + 1);
            input.splice(at..at, seed.iter().copied());
        }
        let mut chunks = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < input.len() {
            let end = (at + cuts[i % cuts.len()]).min(input.len());
            chunks.push(&input[at..end]);
            at = end;
            i += 1;
        }
        let mut builder = StoreBuilder::default();
        for user in 0..4u32 {
            builder.push_user(user, (0..10).map(|i| user * 100 + i)).unwrap();
        }
        let limits = Limits { max_head: 400, max_request_line: 200, max_body: 16, ..Limits::DEFAULT };
        let backend = LocalBackend::new(builder.build(Pool::new([7, 8, 9])));
        let mut session = Session::new(backend, limits, 3, 2048);
        let done = run_offline(&mut session, chunks);
        // Every answer is complete and framed, nothing follows an answer
        // that says close, and the connection closes exactly then.
        if let Err(why) = done.answers() {
            prop_assert!(false, "{}", why);
        }
        prop_assert!(session.input_capacity() <= limits.max_request() + 1);
    }
}
