//! The answers a listener gives when it will not route a request: a JSON error
//! (`{"error": message, "reason": code}`, the code also in a header for sidecars
//! reading a peer's answer), and the body limits that end in one.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use crate::body::{BoxBody, BoxError};
use crate::outbound::spool::SpoolError;

/// A JSON error answer: `{"error": message, "reason": code}`.
pub fn error(status: StatusCode, reason: &str, message: impl Into<String>) -> Response<BoxBody> {
    let body = serde_json::json!({"error": message.into(), "reason": reason}).to_string();
    refusal(status, reason, "application/json", body)
}

/// A refusal with `body` of `content_type`, and the reason code in its header.
fn refusal(
    status: StatusCode,
    reason: &str,
    content_type: &'static str,
    body: String,
) -> Response<BoxBody> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(v) = HeaderValue::from_str(reason) {
        r.headers_mut().insert(REASON, v);
    }
    r
}

/// A refusal in plain text, one line: git shows a `text/plain` error body to
/// its user (`remote: …`), where it would hide a JSON one. The reason code is
/// in the header, as with [`error`].
pub fn plain(status: StatusCode, reason: &str, message: impl Into<String>) -> Response<BoxBody> {
    let mut line = message.into();
    line.push('\n');
    refusal(status, reason, "text/plain; charset=utf-8", line)
}

pub use crate::http1::REASON;

/// Refuses a body declared (`Content-Length`) larger than `limit`, before a
/// byte of it is read: nothing waits for, or spools, a body that will not do.
pub fn check_declared(headers: &HeaderMap, limit: u64) -> Result<(), Box<Response<BoxBody>>> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Box::new(too_large(limit)));
    }
    Ok(())
}

fn too_large(limit: u64) -> Response<BoxBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("the request body is larger than the {limit}-byte limit"),
    )
}

/// The answer to a body that could not be spooled: too large (413, as a
/// declared one), cut off by the client (400), or no room on disk (500).
pub fn spool_refusal(e: SpoolError) -> Response<BoxBody> {
    match e {
        SpoolError::TooLarge(limit) => too_large(limit),
        SpoolError::Read(_) => error(StatusCode::BAD_REQUEST, "body-unreadable", e.to_string()),
        SpoolError::Disk(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "spool-failed",
            e.to_string(),
        ),
    }
}

/// Refuses a body declared larger than `limit` before reading it, and cuts one
/// that grows past it while it streams (the backend then sees an aborted body).
pub fn limit_body(
    headers: &HeaderMap,
    body: hyper::body::Incoming,
    limit: u64,
) -> Result<BoxBody, Box<Response<BoxBody>>> {
    check_declared(headers, limit)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(http_body_util::Limited::new(body, limit)
        .map_err(|e| e as BoxError)
        .boxed())
}
