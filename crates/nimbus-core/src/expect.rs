//! `Expect: 100-continue` answered with a final status: the connection must close.
//!
//! A client that sends `Expect: 100-continue` holds its body back until the server says
//! `100 Continue`. hyper's HTTP/1 server says it only once the service reads the body, so a
//! service that answers first (a refusal: 403, 404, 413) never says it, and RFC 9110 §10.1.1
//! lets the client skip the body and reuse the connection (botocore does, for every S3 upload).
//! hyper, though, still expects `Content-Length` bytes of body there: when it gets round to
//! draining the body after the answer went out, it reads the start of the client's next request
//! as that body and parses the rest (`ET /bucket/key`). Whether the next request is already in
//! the socket by then depends only on scheduling, so the bug shows under load.
//!
//! Answering such a request with `Connection: close` removes the ambiguity: the client opens a
//! new connection for its next request. Every server of nimbus that takes request bodies over
//! HTTP/1.1 (the gateway, the AWS port, an instance's Runtime API and AWS proxy) does this for
//! any answer that is not a success, which is where a body can go unread. A success after an
//! unread body would need it too; nimbus's handlers read the whole body before they succeed.

use std::future::Future;

use http::header::{CONNECTION, EXPECT};
use http::{HeaderValue, Request, Response, Version};

/// Answer `request` with `serve`, closing the connection after the answer when it asked for
/// `100 Continue` and the answer is not a success. What every HTTP/1 service of nimbus wraps
/// its handler in.
pub async fn serve_closing_unanswered<B, R, F>(request: Request<B>, serve: impl FnOnce(Request<B>) -> F) -> Response<R>
where
    F: Future<Output = Response<R>>,
{
    let expected = expects_continue(&request);
    let mut response = serve(request).await;
    close_if_unanswered(expected, &mut response);
    response
}

/// Whether `request` asked for `100 Continue` (HTTP/1.1 only: HTTP/1.0 ignores it, and HTTP/2
/// does not need the connection closed).
fn expects_continue<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Close the connection after `response` when the request asked for `100 Continue` and the
/// answer is not a success (its body may be unread; see the module's documentation).
fn close_if_unanswered<B>(expected_continue: bool, response: &mut Response<B>) {
    if expected_continue && !response.status().is_success() {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn request(version: Version, expect: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method("PUT").uri("/b/k").version(version);
        if let Some(e) = expect {
            b = b.header(EXPECT, e);
        }
        b.body(()).unwrap()
    }

    fn answer(status: StatusCode, expected: bool) -> Option<String> {
        let mut r = Response::builder().status(status).body(()).unwrap();
        close_if_unanswered(expected, &mut r);
        r.headers().get(CONNECTION).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn only_an_http_1_1_expectation_of_100_continue_counts() {
        assert!(expects_continue(&request(Version::HTTP_11, Some("100-continue"))));
        assert!(expects_continue(&request(Version::HTTP_11, Some("100-Continue"))));
        assert!(!expects_continue(&request(Version::HTTP_11, None)));
        assert!(!expects_continue(&request(Version::HTTP_10, Some("100-continue"))));
        assert!(!expects_continue(&request(Version::HTTP_2, Some("100-continue"))));
    }

    #[test]
    fn a_refusal_of_an_expecting_request_closes_the_connection_and_a_success_does_not() {
        assert_eq!(answer(StatusCode::FORBIDDEN, true).as_deref(), Some("close"));
        assert_eq!(answer(StatusCode::PAYLOAD_TOO_LARGE, true).as_deref(), Some("close"));
        assert_eq!(answer(StatusCode::OK, true), None);
        assert_eq!(answer(StatusCode::FORBIDDEN, false), None);
    }
}
