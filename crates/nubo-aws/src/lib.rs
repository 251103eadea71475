//! AWS wire formats Nubo speaks, so that AWS Lambda handlers and AWS clients work unchanged.
//!
//! This crate owns the byte-level contracts with AWS software: how an AWS SDK signs a request
//! ([`sigv4`]), the event a Lambda HTTP handler receives and the response it returns
//! ([`apigw`], API Gateway HTTP API payload v2.0, which Lambda function URLs share), and the
//! error shape the Lambda SDKs parse ([`lambda_errors`]).
//!
//! It is pure: no I/O, no clock reads (callers pass `now`), no global state. That keeps these
//! formats testable against AWS's published vectors and real SDK output, and lets the server
//! decide routing, limits and logging while this crate only decides what the bytes mean.
//! Nothing here panics on untrusted input; every rejection says what was wrong.

pub mod apigw;
pub mod lambda_errors;
mod percent;
pub mod sigv4;

/// Shortens untrusted text echoed in an error message, so a hostile input cannot flood logs.
fn clip(s: &str) -> &str {
    const MAX_CHARS: usize = 64;
    match s.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}
