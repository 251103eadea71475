//! An instance's stdout and stderr, cut into lines for the function's log; the last stderr
//! lines are kept to explain a failed start.

use crate::{LogFn, LogRecord};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
/// tagged with it. A line read shortly after the invocation ended still gets its tag: the
/// answer can reach the server over TCP before the line written just before it is read from
/// the pipe.
#[derive(Clone, Default)]
pub struct Serving(Arc<Mutex<ServingState>>);

#[derive(Default)]
struct ServingState {
    current: Option<Arc<str>>,
    ended: Option<(Arc<str>, Instant)>,
}

/// How long after an invocation ends its late lines are still attributed to it.
const LATE_LINES: Duration = Duration::from_secs(1);

impl Serving {
    pub fn set(&self, invocation: Option<&str>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match invocation {
            Some(id) => {
                s.current = Some(Arc::from(id));
                s.ended = None;
            }
            None => {
                if let Some(id) = s.current.take() {
                    s.ended = Some((id, Instant::now()));
                }
            }
        }
    }

    fn get(&self) -> Option<Arc<str>> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.current.clone().or_else(|| {
            s.ended
                .as_ref()
                .filter(|(_, at)| at.elapsed() < LATE_LINES)
                .map(|(id, _)| id.clone())
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_lines_keep_the_invocation_they_were_written_in() {
        let s = Serving::default();
        assert_eq!(s.get(), None);
        s.set(Some("a"));
        assert_eq!(s.get().as_deref(), Some("a"));
        s.set(None);
        assert_eq!(s.get().as_deref(), Some("a"), "read just after the answer");
        s.set(Some("b"));
        assert_eq!(s.get().as_deref(), Some("b"));
        s.set(None);
        s.0.lock().unwrap().ended.as_mut().unwrap().1 -= LATE_LINES;
        assert_eq!(s.get(), None, "long after, a line is nobody's");
    }
}
