//! An instance's stdout and stderr, cut into lines for the function's log; the last stderr
//! lines are kept to explain a failed start.

use crate::{LogFn, LogRecord};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Lines longer than this are cut, as for wasm guests.
const MAX_LINE: usize = 16 * 1024;
/// Stderr lines quoted in a start failure.
const TAIL_LINES: usize = 12;

#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: &str) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_string());
    }

    /// `; last stderr lines:\n  ...`, or nothing when the app wrote none.
    pub fn render(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            return String::new();
        }
        let mut s = String::from("; last lines of its stderr:");
        for l in t.iter() {
            s.push_str("\n  ");
            s.push_str(l);
        }
        s
    }
}

/// The invocation an instance is serving, when it serves one at a time: its output lines are
/// tagged with it.
#[derive(Clone, Default)]
pub struct Serving(Arc<Mutex<Option<Arc<str>>>>);

impl Serving {
    pub fn set(&self, invocation: Option<&str>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = invocation.map(Arc::from);
    }

    fn get(&self) -> Option<Arc<str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reads `from` to its end, one log record per line.
pub(crate) async fn pump(
    mut from: impl AsyncRead + Unpin,
    stream: &'static str,
    instance: Arc<str>,
    serving: Serving,
    log: LogFn,
    tail: Option<StderrTail>,
) {
    let mut buf = vec![0u8; 8192];
    let mut partial: Vec<u8> = Vec::new();
    let emit = |bytes: &[u8]| {
        let line = String::from_utf8_lossy(bytes)
            .trim_end_matches('\r')
            .to_string();
        if let Some(t) = &tail {
            t.push(&line);
        }
        log(LogRecord {
            stream,
            instance: instance.clone(),
            invocation: serving.get(),
            line,
        });
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut bytes = &buf[..n];
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            partial.extend_from_slice(&bytes[..nl]);
            emit(&partial);
            partial.clear();
            bytes = &bytes[nl + 1..];
        }
        partial.extend_from_slice(bytes);
        while partial.len() >= MAX_LINE {
            let rest = partial.split_off(MAX_LINE);
            emit(&partial);
            partial = rest;
        }
    }
    if !partial.is_empty() {
        emit(&partial);
    }
}
