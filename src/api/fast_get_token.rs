//! GetToken's common case, answered without tonic's generic unary path.
//!
//! Almost every call is a known key, a tenant its scope covers and a token
//! the cache holds. For that case this layer (inside the idle tracking, in
//! front of tonic's router) reads the one small message, authenticates, asks
//! the cache and writes the answer itself: the response headers, one DATA
//! frame and the `grpc-status: 0` trailer. That skips the router, the
//! interceptor's request conversions and tonic's streaming codec, which
//! cost more than the rest of the call (docs/BENCHMARKS.md, "GetToken
//! against a bare server").
//!
//! Everything else is handed on unchanged to the full path (`auth.rs`,
//! `token.rs`), with the body bytes read so far replayed in front of the
//! rest: another method, another content type or a compressed message, a
//! message that is not exactly one small uncompressed GetTokenRequest, no
//! key or not exactly one `authorization` entry, an unknown key, a tenant
//! outside the key's scope, a token that must first be fetched, a draining
//! daemon. So every error, refusal, wait and count stays in one place and
//! the two paths cannot disagree on one.
//!
//! It also holds every call of a replica resumed after a long pause until
//! its cache has caught up with the change feed (`broker/catch_up.rs`),
//! so neither path answers from a cache the other replicas stopped
//! waiting for.
//!
//! Does not: wait for anything but the request's own body and that
//! catch-up (the server's per-call timeout is outside this layer), or
//! answer on the local admin socket (its peers may be ADMIN without a
//! key; the full path decides).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use prost::Message;
use tonic::codegen::http::{self, header, HeaderMap, HeaderValue};
use tonic::codegen::{BoxFuture, Service};
use tonic::Status;
use tower::Layer;

use super::auth::{bearer_key, GET_TOKEN_PATH};
use super::drain::Drain;
use super::token::TokenApi;
use crate::access::Clients;
use crate::proto;

type Body = tonic::body::Body;

/// A GetTokenRequest is a tenant id and a number: a body longer than this
/// is not the common case. It is below the smallest `[grpc]
/// max_message_bytes` (4096), so the fast path never answers a message the
/// full path would refuse as too large.
const MAX_FAST_BODY: usize = 1024;

/// gRPC's length prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// What the fast path needs; `None` in the layer turns it off.
pub struct FastPath {
    pub tokens: Arc<TokenApi>,
    pub clients: Arc<Clients>,
    pub drain: Arc<Drain>,
}

#[derive(Clone)]
pub struct FastGetTokenLayer(Option<Arc<FastPath>>);

impl FastGetTokenLayer {
    pub fn on(fast: FastPath) -> Self {
        Self(Some(Arc::new(fast)))
    }

    /// Every request goes to the full path (the local admin socket).
    pub fn off() -> Self {
        Self(None)
    }
}

impl<S> Layer<S> for FastGetTokenLayer {
    type Service = FastGetToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FastGetToken {
            fast: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct FastGetToken<S> {
    fast: Option<Arc<FastPath>>,
    inner: S,
}

impl<S> Service<http::Request<Body>> for FastGetToken<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(fast) = &self.fast else {
            return Box::pin(self.inner.call(req));
        };
        let stale = fast.tokens.catch_up().is_stale();
        let plain = is_plain_get_token(&req);
        if !plain && !stale {
            return Box::pin(self.inner.call(req));
        }
        let fast = fast.clone();
        // The service polled ready is the one to call later (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if stale {
                // Resumed after a long pause: every call, on either path,
                // answers after the cache has caught up with the feed.
                fast.tokens.catch_up().wait().await;
            }
            if !plain {
                return inner.call(req).await;
            }
            let (parts, mut body) = req.into_parts();
            let read = read_small_body(&mut body).await;
            if let Some(message) = read.message() {
                if let Some(answer) = fast.answer(&parts.headers, &message) {
                    return Ok(answer);
                }
            }
            let replay = Replay {
                read: read.frames,
                rest: body,
            };
            inner
                .call(http::Request::from_parts(parts, Body::new(replay)))
                .await
        })
    }
}

impl FastPath {
    /// The encoded answer, or `None` for the full path.
    fn answer(&self, headers: &HeaderMap, message: &[u8]) -> Option<http::Response<Body>> {
        if self.drain.is_draining() {
            return None;
        }
        let request = proto::GetTokenRequest::decode(unprefixed(message)?).ok()?;
        let mut keys = headers.get_all(header::AUTHORIZATION).iter();
        let (key, None) = (keys.next()?, keys.next()) else {
            return None;
        };
        let caller = self.clients.authenticate(bearer_key(key.to_str().ok()?)?)?;
        let token = self.tokens.cached_answer(&caller, &request)?;
        Some(ok_response(&token))
    }
}

/// POST to GetToken, protobuf over gRPC, no message compression.
fn is_plain_get_token(req: &http::Request<Body>) -> bool {
    let headers = req.headers();
    req.method() == http::Method::POST
        && req.uri().path() == GET_TOKEN_PATH
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/grpc" || v == "application/grpc+proto")
        && headers.get("grpc-encoding").is_none_or(|v| v == "identity")
}

/// The message of a body that is exactly one uncompressed gRPC frame.
fn unprefixed(body: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = body.split_at_checked(PREFIX)?;
    let length = u32::from_be_bytes(prefix[1..].try_into().ok()?);
    (prefix[0] == 0 && usize::try_from(length).ok()? == message.len()).then_some(message)
}

/// The body frames read, in order, and whether the body ended within
/// [`MAX_FAST_BODY`] bytes with nothing but data.
struct ReadBody {
    frames: VecDeque<Result<Frame<Bytes>, Status>>,
    complete: bool,
}

impl ReadBody {
    /// The whole body, if it was read completely.
    fn message(&self) -> Option<Bytes> {
        if !self.complete {
            return None;
        }
        let data = || {
            self.frames
                .iter()
                .filter_map(|f| f.as_ref().ok()?.data_ref())
        };
        match self.frames.len() {
            1 => data().next().cloned(),
            _ => Some(
                data()
                    .fold(BytesMut::new(), |mut all, d| {
                        all.extend_from_slice(d);
                        all
                    })
                    .freeze(),
            ),
        }
    }
}

async fn read_small_body(body: &mut Body) -> ReadBody {
    let mut read = ReadBody {
        frames: VecDeque::new(),
        complete: false,
    };
    let mut length = 0;
    loop {
        let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        else {
            read.complete = true;
            return read;
        };
        let usable = match &frame {
            Ok(f) => f.data_ref().map(|d| {
                length += d.len();
                length <= MAX_FAST_BODY
            }),
            Err(_) => None,
        };
        read.frames.push_back(frame);
        if usable != Some(true) {
            return read;
        }
    }
}

/// The request body for the full path: the frames already read, then the
/// rest of the stream.
struct Replay {
    read: VecDeque<Result<Frame<Bytes>, Status>>,
    rest: Body,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match this.read.pop_front() {
            Some(frame) => Poll::Ready(Some(frame)),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

/// A unary OK answer: headers, one DATA frame, the `grpc-status` trailer.
fn ok_response(token: &proto::AccessToken) -> http::Response<Body> {
    let length = token.encoded_len();
    let mut data = BytesMut::with_capacity(PREFIX + length);
    data.put_u8(0);
    // A token message is far below 4 GiB; the full path would refuse one
    // that is not (it never gets here: `cached_answer` holds real tokens).
    data.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    token.encode_raw(&mut data);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(Answer {
        data: Some(data.freeze()),
        trailers: Some(trailers),
    }));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = match this.data.take() {
            Some(data) => Frame::data(data),
            None => match this.trailers.take() {
                Some(trailers) => Frame::trailers(trailers),
                None => return Poll::Ready(None),
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        hint.set_lower(self.data.as_ref().map_or(0, |d| d.len() as u64));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn only_one_exact_uncompressed_frame_is_a_message() {
        assert_eq!(unprefixed(&framed(b"abc")), Some(&b"abc"[..]));
        assert_eq!(unprefixed(&framed(b"")), Some(&b""[..]));
        let mut compressed = framed(b"abc");
        compressed[0] = 1;
        assert_eq!(unprefixed(&compressed), None);
        let mut two = framed(b"abc");
        two.extend_from_slice(&framed(b"d"));
        assert_eq!(unprefixed(&two), None);
        assert_eq!(unprefixed(&framed(b"abc")[..6]), None);
        assert_eq!(unprefixed(&[0, 0, 0]), None);
    }

    fn body_of(frames: Vec<Result<Frame<Bytes>, Status>>) -> Body {
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_small_body_in_pieces_is_read_whole() {
        let mut body = body_of(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ]);
        let read = read_small_body(&mut body).await;
        assert_eq!(read.message().as_deref(), Some(&b"abcd"[..]));
    }

    #[tokio::test]
    async fn what_is_not_the_common_case_is_replayed_whole() {
        let big = Bytes::from(vec![7u8; MAX_FAST_BODY + 1]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x", HeaderValue::from_static("y"));
        for frames in [
            vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Ok(Frame::data(big.clone())),
                Ok(Frame::data(Bytes::from_static(b"tail"))),
            ],
            vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Ok(Frame::trailers(trailers.clone())),
            ],
            vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Err(Status::cancelled("gone")),
            ],
        ] {
            let expected: Vec<String> = frames.iter().map(|f| format!("{f:?}")).collect();
            let mut body = body_of(frames);
            let read = read_small_body(&mut body).await;
            assert!(read.message().is_none());
            let mut replay = Replay {
                read: read.frames,
                rest: body,
            };
            let mut seen = Vec::new();
            while let Some(frame) = replay.frame().await {
                seen.push(format!("{frame:?}"));
            }
            assert_eq!(seen, expected);
        }
    }

    #[tokio::test]
    async fn the_answer_is_one_framed_message_then_grpc_status_0() {
        let token = proto::AccessToken {
            tenant_id: "t".into(),
            access_token: "secret".into(),
            ..Default::default()
        };
        let response = ok_response(&token);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let bytes = collected.to_bytes();
        let decoded = proto::AccessToken::decode(unprefixed(&bytes).unwrap()).unwrap();
        assert_eq!(decoded, token);
    }
}
