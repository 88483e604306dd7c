//! The body of every gateway response: whole (`Full`, what every handler builds) or streamed
//! (a function's streamed response, `nimbus_core::stream`). The streamed kinds are only made
//! for streamed results, so buffered responses cost what they did (no box, no task).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use nimbus_core::{BodyReceiver, StreamError};
use tokio::sync::mpsc;

/// A response as hyper sends it.
pub type GwResp = http::Response<GwBody>;

/// See the module doc.
pub enum GwBody {
    Full(Full<Bytes>),
    /// A function's body as it arrives; an error mid-way cuts it (the connection is reset, so
    /// the client sees an incomplete body), as a Lambda function URL does. The error is held
    /// for one poll (see `poll_frame`).
    Cut(BodyReceiver, Option<StreamError>),
    /// Frames made by a task (the Invoke API's event stream).
    Frames(mpsc::Receiver<Bytes>),
}

impl From<Full<Bytes>> for GwBody {
    fn from(b: Full<Bytes>) -> Self {
        GwBody::Full(b)
    }
}

/// Every gateway handler answers with `Full`; this wraps it for hyper.
pub fn whole(r: crate::util::Resp) -> GwResp {
    r.map(GwBody::Full)
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.get_mut() {
            GwBody::Full(f) => Pin::new(f).poll_frame(cx).map(|o| o.map(|r| r.map_err(|never| match never {}))),
            GwBody::Cut(rx, held) => {
                if let Some(e) = held.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rx.poll_next(cx) {
                    // hyper drops what it has not written when a body fails, and it writes (the
                    // head, earlier chunks) when the body is pending: so the cut comes one poll
                    // later, or a client of a function that failed quickly would get no head.
                    Poll::Ready(Some(Err(e))) => {
                        *held = Some(e);
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    other => other.map(|o| o.map(|r| r.map(Frame::data))),
                }
            }
            GwBody::Frames(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GwBody::Full(f) => f.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GwBody::Full(f) => f.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
