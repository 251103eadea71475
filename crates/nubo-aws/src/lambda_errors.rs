//! The error shape the AWS SDKs parse from the Lambda API.
//!
//! SDKs read the error code from the `x-amzn-ErrorType` header (falling back to `__type` in
//! the body) and branch on it, e.g. to retry throttling or to fix clock skew, so errors must
//! carry AWS's codes rather than Nubo's own.

use crate::sigv4::SigV4Error;
use serde_json::json;

/// The header that carries [`LambdaApiError::code`].
pub const ERROR_TYPE_HEADER: &str = "x-amzn-ErrorType";

/// An API error the Lambda SDKs understand: send `status`, the header
/// `x-amzn-ErrorType: <code>` and [`body`](Self::body) as `application/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaApiError {
    pub status: u16,
    /// An AWS error code such as `ResourceNotFoundException`.
    pub code: &'static str,
    pub message: String,
}

impl LambdaApiError {
    /// `{"Type": "User"|"Service", "message": ..., "__type": code}`.
    pub fn body(&self) -> Vec<u8> {
        json!({"Type": self.kind(), "message": self.message, "__type": self.code})
            .to_string()
            .into_bytes()
    }

    /// Whose fault it is, as AWS reports it: "User" for 4xx, "Service" for 5xx.
    pub fn kind(&self) -> &'static str {
        if self.status >= 500 {
            "Service"
        } else {
            "User"
        }
    }
}

/// A rejected signature is a 403 with the code the SDKs expect.
impl From<SigV4Error> for LambdaApiError {
    fn from(err: SigV4Error) -> Self {
        LambdaApiError {
            status: 403,
            code: err.aws_code(),
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn user_error_body() {
        let err = LambdaApiError {
            status: 404,
            code: "ResourceNotFoundException",
            message: "Function not found: hello".to_owned(),
        };
        assert_eq!(err.kind(), "User");
        let body: Value = serde_json::from_slice(&err.body()).expect("json body");
        assert_eq!(
            body,
            json!({
                "Type": "User",
                "message": "Function not found: hello",
                "__type": "ResourceNotFoundException"
            })
        );
    }

    #[test]
    fn service_error_kind() {
        let err = LambdaApiError {
            status: 500,
            code: "ServiceException",
            message: "store unavailable".to_owned(),
        };
        assert_eq!(err.kind(), "Service");
    }

    #[test]
    fn from_sigv4_error() {
        let err = LambdaApiError::from(SigV4Error::UnknownAccessKey("AKID".to_owned()));
        assert_eq!(err.status, 403);
        assert_eq!(err.code, "UnrecognizedClientException");
        assert!(err.message.contains("AKID"));
    }
}
