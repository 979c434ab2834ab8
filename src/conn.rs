//! One client connection: read, answer every complete request in order,
//! write all answers at once, repeat.
//!
//! Pipelining comes for free from that loop. A forwarded request is awaited
//! only when its turn comes to be written; answers that are ready before it
//! is are staged, so answers always leave in request order.

use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::http::{self, Action, HttpError, Persist, Request};
use crate::shard::{Pending, Shard, Ticket, Unserved};

/// Read buffer: one largest request (head + body) always fits.
const READ_BUFFER: usize = 16 * 1024;
/// Requests answered per round before writing, so that one pipelining client
/// cannot make its pending output grow without bound.
const MAX_PIPELINE: usize = 128;
/// After the last answer on a connection we close, how long to keep reading
/// (and discarding) what the client still sends, so that unread bytes do not
/// make the kernel reset the connection and destroy the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// An answer not yet written: encoded bytes in `staged`, or a forwarded
/// request still on its way.
enum Queued {
    Bytes(Range<usize>),
    Forwarded(Ticket, Persist),
}

/// Per-connection buffers, allocated once per connection.
struct Conn {
    shard: Rc<Shard>,
    input: Box<[u8]>,
    filled: usize,
    out: Vec<u8>,
    staged: Vec<u8>,
    queued: Vec<Queued>,
}

/// Serves one connection until the client closes it, an error, or a request
/// that ends it.
pub async fn serve(mut stream: TcpStream, shard: Rc<Shard>) {
    // Answers are written whole, so Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        shard,
        input: vec![0; READ_BUFFER].into_boxed_slice(),
        filled: 0,
        out: Vec::with_capacity(READ_BUFFER),
        staged: Vec::new(),
        queued: Vec::new(),
    };
    let mut more_ready = false;
    loop {
        if !more_ready {
            // A full buffer always holds a decodable request (head <= 8 KiB,
            // body <= 4 KiB), so there is always room to read into here.
            debug_assert!(conn.filled < conn.input.len());
            match stream.read(&mut conn.input[conn.filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => conn.filled += n,
            }
        }
        let round = conn.answer_ready_requests();
        more_ready = round.more_ready;
        conn.flush_queued().await;
        if stream.write_all(&conn.out).await.is_err() {
            return;
        }
        conn.out.clear();
        if round.close {
            linger(&mut stream).await;
            return;
        }
    }
}

/// What one round of answering found.
struct Round {
    /// The connection must close after these answers.
    close: bool,
    /// Complete requests are still waiting in the buffer.
    more_ready: bool,
}

impl Conn {
    /// Decodes and answers (or forwards) every complete request in the input,
    /// up to [`MAX_PIPELINE`], and drops their bytes from the buffer.
    fn answer_ready_requests(&mut self) -> Round {
        let mut at = 0;
        let mut answered = 0;
        let mut close = false;
        while answered < MAX_PIPELINE {
            let Some(req) = http::decode(&self.input[at..self.filled], self.shard.limits) else {
                break;
            };
            answered += 1;
            self.answer(req);
            if req.persist == Persist::Close {
                close = true;
                break;
            }
            at += req.len;
        }
        self.input.copy_within(at..self.filled, 0);
        self.filled -= at;
        Round {
            close,
            more_ready: !close && answered == MAX_PIPELINE,
        }
    }

    fn answer(&mut self, req: Request) {
        let (user, size) = match req.action {
            Action::Feed { user, size } => (user, size),
            Action::Health => {
                return self.encode(|out, date| http::encode_health(out, date, req.persist))
            }
            Action::Fail(err) => {
                return self.encode(|out, date| http::encode_error(out, date, req.persist, err))
            }
        };
        match self.shard.page(user, size) {
            Pending::Ready(result) => self.encode_page(result, req.persist),
            Pending::Forwarded(ticket) => self.queued.push(Queued::Forwarded(ticket, req.persist)),
        }
    }

    fn encode_page(&mut self, result: Result<Vec<u32>, Unserved>, persist: Persist) {
        let shard = self.shard.clone();
        match result {
            Ok(page) => {
                self.encode(|out, date| http::encode_page(out, date, persist, &page));
                shard.recycle(page);
            }
            Err(Unserved::NothingToServe) => self.encode(|out, date| {
                http::encode_error(out, date, persist, HttpError::NothingToServe)
            }),
            Err(Unserved::Overloaded) => self
                .encode(|out, date| http::encode_error(out, date, persist, HttpError::Overloaded)),
        }
    }

    /// Encodes an answer that is ready: straight into the output if nothing
    /// before it is still waiting, else into the staging buffer.
    fn encode(&mut self, f: impl FnOnce(&mut Vec<u8>, &http::HttpDate)) {
        let date = self.shard.date();
        if self.queued.is_empty() {
            f(&mut self.out, &date);
        } else {
            let start = self.staged.len();
            f(&mut self.staged, &date);
            self.queued.push(Queued::Bytes(start..self.staged.len()));
        }
    }

    /// Writes the queued answers into the output in request order, waiting
    /// for forwarded ones as their turn comes.
    async fn flush_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        for q in queued.drain(..) {
            match q {
                Queued::Bytes(range) => self.out.extend_from_slice(&self.staged[range]),
                Queued::Forwarded(ticket, persist) => {
                    let result = ticket.await;
                    self.encode_page(result, persist);
                }
            }
        }
        self.queued = queued;
        self.staged.clear();
    }
}

/// Half-closes, then reads and discards for a moment before the socket is
/// dropped, so that the client receives the last answer instead of a reset.
/// Bounded in time and bytes whatever the client does.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(LINGER, drain).await;
}
