//! The call a log line belongs to: its request id and its RPC (or HTTP route).
//!
//! Every call on either port runs inside [`scope`], a task-local, not a tracing span: a
//! span is built, its fields formatted, entered and left on every poll, and closed, on
//! every call, at info level whether or not anything logs (about 5,500 instructions per
//! cached Verify, measured with callgrind). The task-local costs a pointer swap per poll;
//! the log formatter ([`super::format`]) reads it only when a line is written. A request
//! id the caller did not send is one counter increment, formatted only for a log line
//! and for the answer's header, which carries it only when there is something to find
//! under it ([`Call::answer_header`]).

use std::{
    cell::Cell,
    fmt,
    future::Future,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static CALL: Call;
}

/// What log lines of a call say about it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The request id.
    pub id: RequestId,
    /// `rpc` (a gRPC method) or `http` (a route of the HTTP port).
    pub kind: Kind,
    /// The method (`package.Service/Method`) or route name.
    pub name: &'static str,
    /// Whether a log line has carried the id (set by the formatter, in the call's own
    /// task; a copy [`carried`] into another task has its own).
    logged: Cell<bool>,
}

impl Call {
    /// A call that has logged nothing yet.
    pub fn new(id: RequestId, kind: Kind, name: &'static str) -> Self {
        Self {
            id,
            kind,
            name,
            logged: Cell::new(false),
        }
    }

    /// Notes that a log line carried the id.
    pub fn mark_logged(&self) {
        self.logged.set(true);
    }

    /// The id as the answer's `x-request-id`, if the answer should carry it: the caller's
    /// own always (it is theirs to correlate); a made one when `always` (calls whose id is
    /// recorded with what they did: the management calls) or when a log line carried it.
    /// So every id an answer shows leads to something, and a cached Verify or Check that
    /// logged nothing sends no header: a made id is unique per call, so HPACK cannot index
    /// it, and its 32 Huffman-coded digits were the largest per-call cost the server had
    /// beyond the no-op's (callgrind: about 1,600 instructions and 35 bytes a reply).
    pub fn answer_header(&self, always: bool) -> Option<HeaderValue> {
        match self.id {
            RequestId::Caller(_) => Some(self.id.header()),
            RequestId::Made(_) if always || self.logged.get() => Some(self.id.header()),
            RequestId::Made(_) => None,
        }
    }
}

/// Which port a call came in on, named as its log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A gRPC call: its lines carry `rpc=<method>`.
    Rpc,
    /// An HTTP request: its lines carry `route=<route>`.
    Http,
}

impl Kind {
    /// The span-like name of the call in text lines (`rpc{…}:`) and the name field's key.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Kind::Rpc => ("rpc", "rpc"),
            Kind::Http => ("http", "route"),
        }
    }
}

/// A request id: the caller's, or one made here.
#[derive(Clone, Debug)]
pub enum RequestId {
    /// The caller's `x-request-id`, already checked by `grpc::request_id::usable`.
    Caller(HeaderValue),
    /// An id made by this process: 32 hex digits, the process's random 64-bit prefix and
    /// a number unique in the process, so unique across processes without a random draw
    /// per call.
    Made(u64),
}

impl RequestId {
    /// Returns the caller's id when it is usable, else a new one.
    pub fn from_caller(value: Option<&HeaderValue>) -> Self {
        match value {
            Some(id) if crate::grpc::request_id::usable(id) => RequestId::Caller(id.clone()),
            _ => RequestId::next(),
        }
    }

    /// Returns a new id. Each thread takes numbers from the process's counter in blocks
    /// of [`ID_BLOCK`] and hands them out itself, so that two workers do not write the
    /// counter's cache line on every call; numbers stay unique, in no global order.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            /// The next number this thread hands out, and the end of its block.
            static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        RequestId::Made(BLOCK.with(|block| {
            let (mut next, mut end) = block.get();
            if next == end {
                next = NEXT.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next.wrapping_add(ID_BLOCK);
            }
            block.set((next.wrapping_add(1), end));
            next
        }))
    }

    /// Returns the id as a response header value, marked sensitive: unique per call, so
    /// not worth a slot in either side's HPACK table.
    pub fn header(&self) -> HeaderValue {
        let mut value = match self {
            RequestId::Caller(value) => value.clone(),
            RequestId::Made(n) => {
                let text = made_text(*n);
                HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
            }
        };
        value.set_sensitive(true);
        value
    }
}

/// How many id numbers a thread takes from the process's counter at once.
const ID_BLOCK: u64 = 1024;

/// The random half of the ids this process makes, drawn once.
fn prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(rand::random)
}

fn made_text(n: u64) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (u128::from(prefix()) << 64) | u128::from(n);
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((bits >> (4 * (31 - i))) & 0xf) as usize];
    }
    text
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Usable ids are visible ASCII (checked on the way in).
            RequestId::Caller(value) => f.write_str(value.to_str().unwrap_or_default()),
            RequestId::Made(n) => {
                let text = made_text(*n);
                f.write_str(std::str::from_utf8(&text).unwrap_or_default())
            }
        }
    }
}

/// Runs `work` as the call `call`: log lines written while it is polled carry the call.
pub fn scope<F: Future>(call: Call, work: F) -> TaskLocalFuture<Call, F> {
    CALL.scope(call, work)
}

/// Runs `work` as the current call, if there is one: for work moved to a task of its own
/// (a task-local does not follow `tokio::spawn`).
pub fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let call = current();
    async move {
        match call {
            Some(call) => CALL.scope(call, work).await,
            None => work.await,
        }
    }
}

/// Returns the current call, if any.
pub fn current() -> Option<Call> {
    CALL.try_with(Call::clone).ok()
}

/// Calls `f` with the current call, if any.
pub fn with_current<R>(f: impl FnOnce(&Call) -> R) -> Option<R> {
    CALL.try_with(f).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_carries_a_made_id_only_when_it_leads_somewhere() {
        let made = Call::new(RequestId::Made(3), Kind::Rpc, "x.Y/Z");
        assert_eq!(made.answer_header(false), None, "nothing logged it");
        assert_eq!(
            made.answer_header(true).unwrap(),
            RequestId::Made(3).header(),
            "a management call's id is recorded"
        );
        made.mark_logged();
        assert_eq!(
            made.answer_header(false).unwrap(),
            RequestId::Made(3).header()
        );
        let theirs = HeaderValue::from_static("deploy-42");
        let caller = Call::new(RequestId::Caller(theirs.clone()), Kind::Rpc, "x.Y/Z");
        assert_eq!(caller.answer_header(false).unwrap(), theirs);
    }

    #[test]
    fn made_ids_are_distinct_hex_of_one_prefix() {
        let (a, b) = (RequestId::next().to_string(), RequestId::next().to_string());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a[..16], b[..16], "one process, one prefix");
        assert_eq!(
            RequestId::Made(7).header().to_str().unwrap(),
            RequestId::Made(7).to_string()
        );
    }

    #[test]
    fn ids_made_on_many_threads_never_repeat() {
        // More ids per thread than a block holds, so every thread takes several blocks.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..3 * ID_BLOCK)
                        .map(|_| RequestId::next().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(all.insert(id.clone()), "{id} made twice");
            }
        }
        assert_eq!(all.len() as u64, 4 * 3 * ID_BLOCK);
    }
    #[test]
    fn callers_ids_are_kept_only_when_usable() {
        let good = HeaderValue::from_static("deploy-42");
        assert!(matches!(RequestId::from_caller(Some(&good)), RequestId::Caller(v) if v == good));
        let bad = HeaderValue::from_static("two words");
        assert!(matches!(
            RequestId::from_caller(Some(&bad)),
            RequestId::Made(_)
        ));
        assert!(matches!(RequestId::from_caller(None), RequestId::Made(_)));
    }

    #[tokio::test]
    async fn the_call_follows_its_work_into_a_task_only_when_carried() {
        let call = Call::new(RequestId::Made(1), Kind::Rpc, "x.Y/Z");
        scope(call, async {
            assert_eq!(with_current(|c| c.name), Some("x.Y/Z"));
            let carried = tokio::spawn(carried(async { with_current(|c| c.name) }));
            assert_eq!(carried.await.unwrap(), Some("x.Y/Z"));
            let lost = tokio::spawn(async { with_current(|c| c.name) });
            assert_eq!(lost.await.unwrap(), None);
        })
        .await;
        assert!(current().is_none());
    }
}
