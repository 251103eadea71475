//! Forwarding a request to a process instance on 127.0.0.1 and streaming its answer back.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// One client for every instance: it keeps a few idle connections per instance port.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
}

/// The request as the instance on `port` receives it.
pub fn request(
    mut parts: http::request::Parts,
    body: Bytes,
    port: u16,
    invocation: &str,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("http://127.0.0.1:{port}{path}").parse()?;
    strip_hop_by_hop(&mut parts.headers);
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert("x-forwarded-host", host);
    }
    parts
        .headers
        .insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    if let Ok(v) = http::HeaderValue::from_str(invocation) {
        parts.headers.insert("nubo-invocation-id", v);
    }
    parts.version = http::Version::HTTP_11;
    Ok(http::Request::from_parts(parts, Full::new(body)))
}

/// The instance's response, with connection headers removed.
pub fn response(resp: http::Response<Incoming>) -> http::Response<Incoming> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    http::Response::from_parts(parts, body)
}

/// A response body that holds something (the instance's lease) until it is fully sent, so an
/// instance streaming an answer counts as busy and is never reclaimed mid-stream.
pub struct Holding<T> {
    body: Incoming,
    _held: T,
}

impl<T> Holding<T> {
    pub fn new(body: Incoming, held: T) -> Self {
        Holding { body, _held: held }
    }
}

impl<T: Unpin> Body for Holding<T> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
