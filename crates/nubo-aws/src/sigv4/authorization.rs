//! Parsing the `Authorization: AWS4-HMAC-SHA256 ...` header into its parts.

use super::SigV4Error;
use crate::clip;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The parts of a SigV4 `Authorization` header, borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Authorization<'a> {
    pub access_key: &'a str,
    /// `YYYYMMDD` of the credential scope.
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// Lowercase header names in the order the client listed them.
    pub signed_headers: Vec<&'a str>,
    pub signature: [u8; 32],
}

fn malformed(message: impl Into<String>) -> SigV4Error {
    SigV4Error::Malformed(message.into())
}

impl<'a> Authorization<'a> {
    /// Finds and parses the one `Authorization` header.
    pub fn from_headers(headers: &'a http::HeaderMap) -> Result<Self, SigV4Error> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(SigV4Error::MissingAuthorization);
        };
        if values.next().is_some() {
            return Err(malformed(
                "the request has more than one Authorization header",
            ));
        }
        let text = value
            .to_str()
            .map_err(|_| malformed("the Authorization header is not ASCII text"))?;
        Self::parse(text)
    }

    pub fn parse(header: &'a str) -> Result<Self, SigV4Error> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((header, ""));
        if scheme != ALGORITHM {
            return Err(malformed(format!(
                "the Authorization header must start with '{ALGORITHM} ' (only SigV4 header \
                 signing is supported), not {:?}",
                clip(scheme)
            )));
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(malformed(format!(
                    "Authorization component {:?} is not of the form Name=value",
                    clip(part)
                )));
            };
            let slot = match name.trim() {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                other => {
                    return Err(malformed(format!(
                        "unknown Authorization component {:?}; expected Credential, \
                         SignedHeaders and Signature",
                        clip(other)
                    )));
                }
            };
            if slot.replace(value.trim()).is_some() {
                return Err(malformed(format!(
                    "Authorization has {} more than once",
                    name.trim()
                )));
            }
        }
        let require = |slot: Option<&'a str>, name: &str| {
            slot.ok_or_else(|| malformed(format!("the Authorization header lacks {name}=")))
        };
        let credential = require(credential, "Credential")?;
        let signed_headers = require(signed_headers, "SignedHeaders")?;
        let signature = require(signature, "Signature")?;

        let scope: Vec<&str> = credential.split('/').collect();
        let &[access_key, date, region, service, terminator] = scope.as_slice() else {
            return Err(credential_error(credential));
        };
        if terminator != "aws4_request"
            || [access_key, region, service].iter().any(|s| s.is_empty())
            || date.len() != 8
            || !date.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(credential_error(credential));
        }

        Ok(Authorization {
            access_key,
            date,
            region,
            service,
            signed_headers: parse_signed_headers(signed_headers)?,
            signature: parse_signature(signature)?,
        })
    }
}

fn credential_error(credential: &str) -> SigV4Error {
    malformed(format!(
        "Credential {:?} is not of the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request",
        clip(credential)
    ))
}

fn parse_signed_headers(list: &str) -> Result<Vec<&str>, SigV4Error> {
    let names: Vec<&str> = list.split(';').collect();
    for name in &names {
        let valid = !name.is_empty()
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !valid {
            return Err(malformed(format!(
                "SignedHeaders {:?} must be lowercase header names separated by ';'",
                clip(list)
            )));
        }
    }
    if !names.contains(&"host") {
        return Err(malformed("SignedHeaders must include host"));
    }
    Ok(names)
}

fn parse_signature(hex_text: &str) -> Result<[u8; 32], SigV4Error> {
    let mut signature = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut signature)
        .map_err(|_| malformed("Signature must be 64 hexadecimal digits"))?;
    Ok(signature)
}
