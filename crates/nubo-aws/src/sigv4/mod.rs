//! Verifies AWS Signature Version 4 on incoming requests, header form only.
//!
//! AWS SDKs and CLIs sign every request with SigV4; checking it here lets them call Nubo with
//! nothing but an endpoint override and a key pair. Canonicalization follows what botocore and
//! the other SDKs do for non-S3 services (Lambda): the path is normalized and encoded once
//! more, the query is decoded and re-encoded strictly. Presigned URLs (query-string auth) and
//! chunked streaming payloads are not supported.

mod authorization;
mod canonical;
#[cfg(test)]
mod tests;

use crate::clip;
use authorization::Authorization;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's signing time may be from `now`, as AWS allows.
const MAX_SKEW_SECS: i64 = 15 * 60;
/// The `X-Amz-Date` form, e.g. `20150830T123600Z`.
const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The access keys Nubo accepts: access key id -> secret.
///
/// `Debug` shows only the ids so keys can be logged without leaking secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keys(BTreeMap<String, String>);

impl Keys {
    /// Parses `"AKID:SECRET[,AKID2:SECRET2...]"`; errors name the bad entry but never echo a
    /// secret. Blank entries are skipped, so an empty spec gives no keys.
    pub fn parse(spec: &str) -> Result<Keys, String> {
        let mut keys = BTreeMap::new();
        for (index, entry) in spec.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let n = index + 1;
            let Some((id, secret)) = entry.split_once(':') else {
                return Err(format!(
                    "access key entry {n} has no ':'; write each key as ACCESS_KEY_ID:SECRET, \
                     separated by ','"
                ));
            };
            let (id, secret) = (id.trim(), secret.trim());
            if id.is_empty() {
                return Err(format!("access key entry {n} has an empty access key id"));
            }
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(format!(
                    "access key id {:?} (entry {n}) may only contain letters, digits, '-', '_' \
                     and '.'",
                    clip(id)
                ));
            }
            if secret.is_empty() {
                return Err(format!("access key {id:?} (entry {n}) has an empty secret"));
            }
            if keys.insert(id.to_owned(), secret.to_owned()).is_some() {
                return Err(format!("access key id {id:?} appears more than once"));
            }
        }
        Ok(Keys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Why a request's signature was rejected. Messages are meant for the client's user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigV4Error {
    #[error(
        "missing Authorization header: sign the request with AWS Signature Version 4 \
         (an AWS SDK or CLI with Nubo's endpoint and an access key does this)"
    )]
    MissingAuthorization,
    #[error("malformed SigV4 signature: {0}")]
    Malformed(String),
    #[error(
        "the access key id {0:?} is not known to this server: use one of the keys it was \
         configured with"
    )]
    UnknownAccessKey(String),
    /// Signing time more than 15 minutes from the server's clock, or absent.
    #[error("{0}")]
    Skewed(String),
    #[error(
        "the request signature we calculated does not match the signature you provided: check \
         the secret access key and that nothing changed the request after signing (path, query, \
         signed headers, body)"
    )]
    SignatureMismatch,
}

impl SigV4Error {
    /// The AWS error code a client expects (SDKs branch on it, e.g. to correct clock skew).
    pub fn aws_code(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthorization => "MissingAuthenticationTokenException",
            SigV4Error::Malformed(_) => "IncompleteSignatureException",
            SigV4Error::UnknownAccessKey(_) => "UnrecognizedClientException",
            SigV4Error::Skewed(_) | SigV4Error::SignatureMismatch => "InvalidSignatureException",
        }
    }
}

/// Checks an `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=..., Signature=...` header and returns the access key id on success.
///
/// `path` and `query` are exactly as received (still percent-encoded, query without `?`).
/// `headers` must hold `Host` (for HTTP/2, copy the URI authority into it first): SigV4
/// requires it to be signed. Any region and service in the scope are accepted.
pub fn verify(
    keys: &Keys,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<String, SigV4Error> {
    let auth = Authorization::from_headers(headers)?;
    let secret = keys
        .0
        .get(auth.access_key)
        .ok_or_else(|| SigV4Error::UnknownAccessKey(auth.access_key.to_owned()))?;
    let amz_date = signing_time(headers, now)?;
    if !amz_date.starts_with(auth.date) {
        return Err(SigV4Error::Malformed(format!(
            "the date {} in Credential does not match the date of X-Amz-Date {amz_date}",
            auth.date
        )));
    }
    let payload_hash = payload_hash(headers, body)?;
    let canonical_request = canonical::request(
        method,
        path,
        query.unwrap_or(""),
        headers,
        &auth.signed_headers,
        &payload_hash,
    )?;
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [auth.date, auth.region, auth.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes()).finalize().into_bytes().to_vec();
    }
    hmac(&key, string_to_sign.as_bytes())
        .verify_slice(&auth.signature)
        .map_err(|_| SigV4Error::SignatureMismatch)?;
    Ok(auth.access_key.to_owned())
}

fn hmac(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac
}

/// The `X-Amz-Date` value, checked to be within [`MAX_SKEW_SECS`] of `now`.
fn signing_time(headers: &http::HeaderMap, now: SystemTime) -> Result<String, SigV4Error> {
    let Some(value) = headers.get("x-amz-date") else {
        return Err(SigV4Error::Skewed(
            "missing X-Amz-Date header: SigV4 requests must carry their signing time".to_owned(),
        ));
    };
    let text = value.to_str().unwrap_or("");
    let bad = || {
        SigV4Error::Malformed(format!(
            "X-Amz-Date {:?} is not a UTC time of the form YYYYMMDDTHHMMSSZ",
            clip(&String::from_utf8_lossy(value.as_bytes()))
        ))
    };
    let shape_ok = text.len() == 16
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(bad());
    }
    let signed = chrono::NaiveDateTime::parse_from_str(text, AMZ_DATE_FORMAT)
        .map_err(|_| bad())?
        .and_utc()
        .timestamp();
    let now_secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    let now_text = amz_date(now_secs);
    if signed < now_secs.saturating_sub(MAX_SKEW_SECS) {
        return Err(SigV4Error::Skewed(format!(
            "Signature expired: {text} is now earlier than {} ({now_text} - 15 min.); sign \
             requests just before sending them and check the client's clock",
            amz_date(now_secs.saturating_sub(MAX_SKEW_SECS))
        )));
    }
    if signed > now_secs.saturating_add(MAX_SKEW_SECS) {
        return Err(SigV4Error::Skewed(format!(
            "Signature not yet current: {text} is still later than {} ({now_text} + 15 min.); \
             check the client's clock",
            amz_date(now_secs.saturating_add(MAX_SKEW_SECS))
        )));
    }
    Ok(text.to_owned())
}

fn amz_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format(AMZ_DATE_FORMAT).to_string())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// The payload hash of the canonical request. A client may send it as
/// `x-amz-content-sha256`; it must then be the body's real hash, or the body would go unsigned.
fn payload_hash(headers: &http::HeaderMap, body: &[u8]) -> Result<String, SigV4Error> {
    let actual = hex::encode(Sha256::digest(body));
    let Some(value) = headers.get("x-amz-content-sha256") else {
        return Ok(actual);
    };
    let claimed = value.to_str().unwrap_or("");
    if claimed.eq_ignore_ascii_case(&actual) {
        return Ok(claimed.to_owned());
    }
    if claimed.len() == 64 && claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigV4Error::SignatureMismatch);
    }
    Err(SigV4Error::Malformed(format!(
        "x-amz-content-sha256 {:?} is not supported: Nubo needs the hex SHA-256 of the body \
         (unsigned and streaming payloads are not accepted)",
        clip(&String::from_utf8_lossy(value.as_bytes()))
    )))
}
