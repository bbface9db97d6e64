//! tonic refuses a request larger than the decoding limit with OUT_OF_RANGE
//! and its own text ("decoded message length too large"), which does not say
//! which setting sets the limit. This layer adds that to the answer: the
//! same code, the original text, and `[grpc] max_message_bytes`. Every
//! other response passes untouched.

use std::task::{Context, Poll};

use futures::future::{MapOk, TryFutureExt};
use tonic::codegen::http;
use tonic::{Code, Status};
use tower::{Layer, Service};

/// What tonic's decoder says when a message is over the limit.
const TONIC_TOO_LARGE: &str = "message length too large";

#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Oversize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<ResBody>) -> http::Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        self.inner.call(req).map_ok(name_the_setting::<ResBody>)
    }
}

/// Rewrites a trailers-only OUT_OF_RANGE "too large" answer's message.
fn name_the_setting<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(resp.headers()) else {
        return resp;
    };
    if status.code() != Code::OutOfRange || !status.message().contains(TONIC_TOO_LARGE) {
        return resp;
    }
    let named = Status::out_of_range(with_setting(status.message()));
    let headers = resp.headers_mut();
    headers.remove("grpc-message");
    if named.add_header(headers).is_err() {
        // Could not encode the new text: the original answer stands.
        let _ = status.add_header(headers);
    }
    resp
}

fn with_setting(message: &str) -> String {
    format!(
        "the request is larger than this daemon accepts ({message}); send a smaller request, or raise [grpc] max_message_bytes in the daemon's configuration"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &Status) -> http::Response<()> {
        let mut resp = http::Response::new(());
        status.add_header(resp.headers_mut()).unwrap();
        resp
    }

    #[test]
    fn only_the_too_large_answer_is_renamed() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 10010 bytes, the limit is: 4096 bytes",
        );
        let out = name_the_setting(answer(&too_large));
        let s = Status::from_header_map(out.headers()).unwrap();
        assert_eq!(s.code(), Code::OutOfRange);
        assert!(
            s.message().contains("[grpc] max_message_bytes"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("10010 bytes"), "{}", s.message());

        let other = Status::out_of_range("page_token is past the end");
        let out = name_the_setting(answer(&other));
        let s = Status::from_header_map(out.headers()).unwrap();
        assert_eq!(s.message(), "page_token is past the end");
        assert!(
            Status::from_header_map(name_the_setting(http::Response::new(())).headers()).is_none()
        );
    }
}
