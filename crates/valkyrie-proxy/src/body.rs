//! Body types passed between the downstream and upstream sides.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type carried by proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body in either direction.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Returns a body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Returns a body with no bytes.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into `BoxError`.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body whose first frame was already read (to check the framing before
    /// anything is sent upstream), followed by the rest of the stream.
    pub struct Prefixed<B> {
        first: Option<Frame<Bytes>>,
        #[pin]
        rest: B,
    }
}

impl<B> Prefixed<B> {
    pub fn new(first: Option<Frame<Bytes>>, rest: B) -> Self {
        Prefixed { first, rest }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(data) = self.first.as_ref().and_then(|frame| frame.data_ref()) {
            let extra = data.len() as u64;
            hint.set_lower(hint.lower() + extra);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + extra);
            }
        }
        hint
    }
}

pin_project_lite::pin_project! {
    /// Wraps a body, counts its data bytes, and runs a callback exactly once
    /// when the stream ends, fails or is dropped, with whether it ended
    /// cleanly and the bytes that passed.
    pub struct OnFinish<B: Body, F: FnOnce(bool, u64)> {
        #[pin]
        inner: B,
        bytes: u64,
        callback: Option<F>,
    }

    impl<B: Body, F: FnOnce(bool, u64)> PinnedDrop for OnFinish<B, F> {
        fn drop(this: Pin<&mut Self>) {
            // A body that was never polled because it was already empty still
            // counts as finished cleanly.
            let this = this.project();
            if let Some(callback) = this.callback.take() {
                callback(this.inner.is_end_stream(), *this.bytes);
            }
        }
    }
}

impl<B: Body, F: FnOnce(bool, u64)> OnFinish<B, F> {
    pub fn new(inner: B, callback: F) -> Self {
        OnFinish {
            inner,
            bytes: 0,
            callback: Some(callback),
        }
    }
}

impl<B, F> Body for OnFinish<B, F>
where
    B: Body<Data = Bytes>,
    F: FnOnce(bool, u64),
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(callback) = this.callback.take() {
                    callback(true, *this.bytes);
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(callback) = this.callback.take() {
                    callback(false, *this.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
