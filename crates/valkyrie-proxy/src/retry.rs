//! Retries: which failures allow another try, the retry budget that keeps
//! retries from multiplying load on a struggling upstream, and the request
//! body buffer that lets a body be sent again.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tracing::warn;
use valkyrie_config::RetryConfig;

use crate::body::{BoxError, ProxyBody};

/// A failure that may allow another try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCondition {
    /// The connection could not be opened; nothing was sent.
    ConnectFailure,
    /// The connection failed after the request started and before the
    /// response head arrived.
    Reset,
    /// The upstream responded with this status, or (504) a try timed out
    /// before the response head.
    Status(u16),
}

/// `[upstreams.retries]` in the form the data plane uses.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    /// Statuses from `retry_on`: 502, 503, 504.
    pub on_status: Vec<u16>,
    /// Largest request body kept for replay, in bytes.
    pub max_replay_body: u64,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig, upstream: &str) -> RetryPolicy {
        let mut policy = RetryPolicy {
            max_retries: config.max_retries,
            per_try_timeout: config.per_try_timeout.map(|timeout| timeout.0),
            on_connect_failure: false,
            on_reset: false,
            on_status: Vec::new(),
            max_replay_body: config.max_replay_body.0,
        };
        for condition in &config.retry_on {
            match condition.as_str() {
                "connect_failure" => policy.on_connect_failure = true,
                "reset" => policy.on_reset = true,
                "502" | "503" | "504" => policy.on_status.push(condition.parse().unwrap_or(0)),
                // Validation rejects other values; a config built in code may still hold one.
                other => {
                    warn!(
                        upstream,
                        condition = other,
                        "unknown retry_on condition ignored"
                    )
                }
            }
        }
        policy
    }

    pub fn allows(&self, condition: RetryCondition) -> bool {
        match condition {
            RetryCondition::ConnectFailure => self.on_connect_failure,
            RetryCondition::Reset => self.on_reset,
            RetryCondition::Status(status) => self.on_status.contains(&status),
        }
    }

    /// Returns true when a response with `status` may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on_status.contains(&status)
    }
}

/// The retry budget of one upstream: a retry may start while the retries in
/// flight stay within `budget_ratio` of the active requests, and
/// `budget_min_per_sec` retries per second are allowed whatever the ratio.
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    in_flight: AtomicUsize,
    /// The second (since the budget's epoch) that `used_this_second` counts.
    second: AtomicU64,
    used_this_second: AtomicU32,
}

/// A retry in flight; it leaves the budget when dropped.
pub struct RetryPermit {
    budget: Arc<RetryBudget>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.budget.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Arc<RetryBudget> {
        Arc::new(RetryBudget {
            ratio: config.budget_ratio.clamp(0.0, 1.0),
            min_per_sec: config.budget_min_per_sec,
            in_flight: AtomicUsize::new(0),
            second: AtomicU64::new(0),
            used_this_second: AtomicU32::new(0),
        })
    }

    /// Returns the retries in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a place for one retry, or returns `None` when the budget is
    /// spent. `active` is the number of requests in flight to the upstream
    /// and `second` a whole-second clock reading.
    pub fn try_acquire(self: &Arc<Self>, active: usize, second: u64) -> Option<RetryPermit> {
        let retries = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let permit = RetryPermit {
            budget: self.clone(),
        };
        if retries as f64 <= self.ratio * active as f64 {
            return Some(permit);
        }
        if self.take_from_second(second) {
            return Some(permit);
        }
        None
    }

    /// Takes one of the retries always allowed per second.
    fn take_from_second(&self, second: u64) -> bool {
        if self.min_per_sec == 0 {
            return false;
        }
        let current = self.second.load(Ordering::Relaxed);
        if current != second
            && self
                .second
                .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used_this_second.store(0, Ordering::Relaxed);
        }
        self.used_this_second
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used < self.min_per_sec).then_some(used + 1)
            })
            .is_ok()
    }
}

/// One frame of a request body, buffered for replay.
enum BufferedFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// The request body shared by every try of a request. The client's stream
/// is read once, and the frames read stay in a buffer of at most `limit`
/// bytes so that a later try can send them again. Once more than `limit`
/// bytes were read, the buffer is dropped and the request can no longer be
/// retried.
struct Shared {
    source: ProxyBody,
    /// Frames read from the source, kept while the buffer has room.
    buffered: VecDeque<BufferedFrame>,
    buffered_bytes: u64,
    /// Frames read from the source so far.
    read_frames: usize,
    limit: u64,
    /// Set once the buffer no longer contains every frame read, because the
    /// body outgrew `limit` or the client's stream failed.
    overflowed: bool,
    source_done: bool,
    /// Bytes the client declared or the source reported as exact.
    exact_length: Option<u64>,
}

/// The request body of a request that may be tried more than once.
#[derive(Clone)]
pub struct ReplaySource {
    /// `None` for a request without a body, which needs no buffer.
    shared: Option<Arc<Mutex<Shared>>>,
}

impl ReplaySource {
    /// Wraps the client's body. A `limit` of 0 keeps nothing, so the
    /// request can be retried only while none of its body was sent.
    pub fn new(source: ProxyBody, limit: u64) -> ReplaySource {
        if source.is_end_stream() {
            return ReplaySource { shared: None };
        }
        let exact_length = source.size_hint().exact();
        ReplaySource {
            shared: Some(Arc::new(Mutex::new(Shared {
                source,
                buffered: VecDeque::new(),
                buffered_bytes: 0,
                read_frames: 0,
                limit,
                overflowed: false,
                source_done: false,
                exact_length,
            }))),
        }
    }

    /// Returns true when a new try can send the whole body, because the
    /// buffer contains every frame read so far.
    pub fn is_replayable(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| !shared.lock().unwrap().overflowed)
    }

    /// Returns true when no byte of the body was read yet.
    pub fn is_untouched(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| shared.lock().unwrap().read_frames == 0)
    }

    /// Returns a body for one try, which replays the kept frames and then
    /// reads on from the client.
    pub fn attempt(&self) -> ProxyBody {
        match &self.shared {
            None => crate::body::empty(),
            Some(shared) => http_body_util::BodyExt::boxed_unsync(AttemptBody {
                shared: shared.clone(),
                position: 0,
                sent_bytes: 0,
            }),
        }
    }
}

/// The body of one try; see [`ReplaySource`].
struct AttemptBody {
    shared: Arc<Mutex<Shared>>,
    /// Index of the next frame this try sends, counted from the first frame
    /// read from the source.
    position: usize,
    sent_bytes: u64,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap();
        if this.position < shared.read_frames {
            // Frames another try already read: replay them from the buffer.
            let Some(kept) = shared.buffered.get(this.position) else {
                return Poll::Ready(Some(Err(
                    "the request body is larger than max_replay_body and cannot be sent again"
                        .into(),
                )));
            };
            let frame = match kept {
                BufferedFrame::Data(data) => {
                    this.sent_bytes += data.len() as u64;
                    Frame::data(data.clone())
                }
                BufferedFrame::Trailers(trailers) => Frame::trailers(trailers.clone()),
            };
            this.position += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if shared.source_done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut shared.source).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.source_done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => {
                // The client's body failed; no try can send it whole.
                shared.overflowed = true;
                shared.source_done = true;
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        shared.read_frames += 1;
        this.position += 1;
        let size = frame.data_ref().map_or(0, |data| data.len() as u64);
        this.sent_bytes += size;
        if !shared.overflowed {
            if shared.buffered_bytes + size > shared.limit {
                shared.overflowed = true;
                shared.buffered.clear();
                shared.buffered_bytes = 0;
            } else if let Some(data) = frame.data_ref() {
                shared.buffered.push_back(BufferedFrame::Data(data.clone()));
                shared.buffered_bytes += size;
            } else if let Some(trailers) = frame.trailers_ref() {
                shared
                    .buffered
                    .push_back(BufferedFrame::Trailers(trailers.clone()));
            }
        }
        if shared.source.is_end_stream() {
            shared.source_done = true;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap();
        shared.source_done && self.position >= shared.read_frames
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock().unwrap();
        match shared.exact_length {
            Some(length) => SizeHint::with_exact(length.saturating_sub(self.sent_bytes)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|part| Ok(Frame::data(Bytes::from_static(part.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    async fn read_all(body: ProxyBody) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn replays_small_body() {
        let source = ReplaySource::new(chunks(&["ab", "cd"]), 16);
        assert!(source.is_untouched());
        assert_eq!(read_all(source.attempt()).await.unwrap(), "abcd");
        assert!(source.is_replayable());
        assert_eq!(read_all(source.attempt()).await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn second_try_continues_a_partial_read() {
        let source = ReplaySource::new(chunks(&["ab", "cd", "ef"]), 16);
        let mut first = source.attempt();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        assert!(!source.is_untouched());
        assert_eq!(read_all(source.attempt()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn overflow_stops_replay() {
        let source = ReplaySource::new(chunks(&["abc", "def"]), 4);
        assert_eq!(read_all(source.attempt()).await.unwrap(), "abcdef");
        assert!(!source.is_replayable());
        assert!(read_all(source.attempt()).await.is_err());
    }

    #[tokio::test]
    async fn empty_body_is_always_replayable() {
        let source = ReplaySource::new(crate::body::empty(), 0);
        assert!(source.attempt().is_end_stream());
        assert!(source.is_replayable());
    }

    #[test]
    fn budget_follows_ratio_then_per_second_allowance() {
        let config = RetryConfig {
            budget_ratio: 0.5,
            budget_min_per_sec: 1,
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&config);
        let first = budget.try_acquire(2, 0).expect("within the ratio");
        let second = budget.try_acquire(2, 0).expect("the per-second allowance");
        assert!(budget.try_acquire(2, 0).is_none());
        assert_eq!(budget.in_flight(), 2);
        drop(first);
        drop(second);
        assert_eq!(budget.in_flight(), 0);
        let _next_second = budget.try_acquire(0, 1).expect("a new second");
        assert!(budget.try_acquire(0, 1).is_none());
    }

    #[test]
    fn zero_budget_allows_nothing() {
        let config = RetryConfig {
            budget_ratio: 0.0,
            budget_min_per_sec: 0,
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(&config);
        assert!(budget.try_acquire(100, 0).is_none());
        assert_eq!(budget.in_flight(), 0);
    }

    #[test]
    fn policy_reads_conditions() {
        let config = RetryConfig {
            retry_on: vec!["reset".into(), "503".into()],
            ..RetryConfig::default()
        };
        let policy = RetryPolicy::new(&config, "api");
        assert!(policy.allows(RetryCondition::Reset));
        assert!(policy.allows(RetryCondition::Status(503)));
        assert!(!policy.allows(RetryCondition::Status(502)));
        assert!(!policy.allows(RetryCondition::ConnectFailure));
    }
}
