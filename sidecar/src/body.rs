//! The body type every listener and client here speaks, whatever carries it
//! (hyper's incoming bodies, spooled files, git's output): one boxed stream of
//! `Bytes`, so a handler's answer can come from anywhere.

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every listener and client here speaks.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body that streams whatever `reader` yields, in chunks of up to 64 KiB.
pub fn reader_body<R>(reader: R) -> BoxBody
where
    R: tokio::io::AsyncRead + Unpin + Send + Sync + 'static,
{
    use tokio::io::AsyncReadExt;
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), r))
            }
            Err(e) => Some((Err(Box::new(e) as BoxError), r)),
        }
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// Wraps a peer's or backend's response, as it streams, for our listeners,
/// without its hop-by-hop headers (RFC 9110 §7.6.1): they were about the
/// connection it came on, and passed on, a backend's `Connection: close`
/// (nginx says it every 1,000 requests) closed the client's connection too.
/// The framing is hyper's to write again; a `101` keeps its `Upgrade`.
pub fn stream_back(resp: Response<Incoming>) -> Response<BoxBody> {
    let mut resp = resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        drop_hop_by_hop(resp.headers_mut());
    }
    resp
}

/// Removes the hop-by-hop headers and those `Connection` lists.
pub fn drop_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<http::HeaderName> = crate::http1::connection_tokens(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
    .into_iter()
    .filter_map(|t| http::HeaderName::from_bytes(t).ok())
    .collect();
    for name in crate::http1::HOP_BY_HOP {
        headers.remove(name);
    }
    for name in listed {
        headers.remove(name);
    }
}
