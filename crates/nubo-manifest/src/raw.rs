//! The manifest as written: every key optional, quantities still text. `validate` turns it into
//! a [`crate::Manifest`]. Unknown keys are refused here, by serde, with their key path.

use crate::Problem;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub project: Option<Scalar>,
    pub functions: Option<BTreeMap<String, RawFunction>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub kind: Option<Scalar>,
    pub component: Option<Scalar>,
    pub build: Option<Scalar>,
    pub env: Option<BTreeMap<String, Scalar>>,
    pub memory: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub concurrency: Option<u32>,
    pub reuse: Option<u32>,
    #[serde(rename = "async")]
    pub async_policy: Option<RawAsync>,
    pub scale: Option<RawScale>,
    pub routes: Option<Vec<RawRoute>>,
    pub cron: Option<Vec<Scalar>>,
    pub dir: Option<Scalar>,
    pub command: Option<Vec<Scalar>>,
    pub ready: Option<Scalar>,
    pub start_timeout: Option<Scalar>,
    pub warm: Option<u32>,
    pub cpu: Option<f64>,
    pub python: Option<RawPython>,
    pub handler: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAsync {
    pub retries: Option<u32>,
    pub max_age: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScale {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub idle: Option<Scalar>,
    pub queue: Option<u32>,
    pub queue_wait: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Option<Scalar>,
    pub methods: Option<Vec<Scalar>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPython {
    pub wsgi: Option<Scalar>,
    pub asgi: Option<Scalar>,
}

/// Any YAML scalar (string, number, bool) as text: `PORT: 8080` in `env` is the string "8080",
/// and `memory: 128` reaches validation, which can then say which unit is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match yaml_serde::Value::deserialize(d)? {
            yaml_serde::Value::String(s) => Ok(Scalar(s)),
            yaml_serde::Value::Number(n) => Ok(Scalar(n.to_string())),
            yaml_serde::Value::Bool(b) => Ok(Scalar(b.to_string())),
            yaml_serde::Value::Null => Err(D::Error::custom("expected a value, found nothing")),
            _ => Err(D::Error::custom(
                "expected a single value (text or number), found a list or a mapping",
            )),
        }
    }
}

pub fn parse(text: &str) -> Result<RawManifest, Problem> {
    if text.trim().is_empty() {
        return Err(Problem {
            path: String::new(),
            message: "the manifest is empty: it needs at least `project:` and `functions:`".into(),
        });
    }
    yaml_serde::from_str(text).map_err(|e| {
        let message = e.to_string();
        // yaml_serde prefixes messages with the key path (`functions.a: unknown field ...`);
        // lift it into the problem's path so every message reads the same way.
        match message.split_once(": ") {
            Some((path, rest))
                if !path.contains(' ') && (path == "project" || path.starts_with("functions")) =>
            {
                Problem {
                    path: path.to_string(),
                    message: rest.to_string(),
                }
            }
            _ => Problem {
                path: String::new(),
                message,
            },
        }
    })
}
