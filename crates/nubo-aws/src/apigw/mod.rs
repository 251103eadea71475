//! API Gateway HTTP API payload format 2.0, which Lambda function URLs also use.
//!
//! Handlers written for AWS (and the runtime libraries that adapt them, such as Mangum,
//! aws-lambda-web-adapter or the Rust `lambda_http` crate) expect exactly this event and
//! return exactly this response shape, so Nubo's HTTP routes translate through it.

mod request;
mod response;
#[cfg(test)]
mod tests;

pub use request::{HttpRequestInfo, request_event};
pub use response::{HttpResponse, response_from_result};
