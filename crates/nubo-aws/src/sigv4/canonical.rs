//! The SigV4 canonical request, built from the request as received.
//!
//! The client signed its own view of the request; these rules rebuild that view so the two
//! hashes meet. They mirror botocore (and the JS, Rust and Java SDKs) for non-S3 services.

use super::SigV4Error;
use crate::clip;
use crate::percent;

/// `METHOD\nURI\nQUERY\nHEADERS\n\nSIGNED_HEADERS\nPAYLOAD_HASH`.
pub(super) fn request(
    method: &str,
    path: &str,
    query: &str,
    headers: &http::HeaderMap,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let mut out = String::new();
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(&uri(path));
    out.push('\n');
    out.push_str(&query_string(query));
    out.push('\n');
    for name in signed_headers {
        out.push_str(name);
        out.push(':');
        out.push_str(&header_value(headers, name)?);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The path with dot segments and empty segments removed, then percent-encoded once more
/// (keeping '/'): AWS's "double encoding", so `%3A` as received becomes `%253A`.
pub(super) fn uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = String::with_capacity(path.len());
    if path.starts_with('/') {
        normalized.push('/');
    }
    normalized.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    percent::encode(normalized.as_bytes(), true)
}

/// Parameters decoded, re-encoded strictly, and sorted by encoded key then encoded value.
/// A parameter without '=' has an empty value.
pub(super) fn query_string(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent::encode(&percent::decode(key), false),
                percent::encode(&percent::decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// All values of a signed header, each trimmed with inner runs of spaces collapsed, joined by ','.
fn header_value(headers: &http::HeaderMap, name: &str) -> Result<String, SigV4Error> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|value| {
            let words: Vec<&[u8]> = value
                .as_bytes()
                .split(|b| *b == b' ' || *b == b'\t')
                .filter(|word| !word.is_empty())
                .collect();
            String::from_utf8_lossy(&words.join(&b' ')).into_owned()
        })
        .collect();
    if values.is_empty() {
        return Err(SigV4Error::Malformed(format!(
            "the signed header {:?} is not in the request",
            clip(name)
        )));
    }
    Ok(values.join(","))
}
