//! A guest's stdout and stderr, cut into lines and handed to the function's log.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// One line a guest wrote.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub instance: Arc<str>,
    /// The invocation being served when the line was written, if any.
    pub invocation: Option<Arc<str>>,
    pub line: String,
}

/// Where lines go. Must not block: it is called on the guest's thread.
pub type LogFn = Arc<dyn Fn(LogRecord) + Send + Sync>;

/// Lines longer than this are cut, so a guest cannot grow the host's buffer without bound.
const MAX_LINE: usize = 16 * 1024;

pub(crate) struct LogContext {
    pub instance: Arc<str>,
    pub invocation: Mutex<Option<Arc<str>>>,
    pub sink: LogFn,
}

/// stdout or stderr of one instance. Cheap to clone; clones share the partial line.
#[derive(Clone)]
pub struct LogStream {
    stream: &'static str,
    ctx: Arc<LogContext>,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    pub(crate) fn new(stream: &'static str, ctx: Arc<LogContext>) -> Self {
        LogStream {
            stream,
            ctx,
            partial: Arc::default(),
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
        let invocation = self
            .ctx
            .invocation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.ctx.sink)(LogRecord {
            stream: self.stream,
            instance: self.ctx.instance.clone(),
            invocation,
            line,
        });
    }

    fn push(&self, mut bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            partial.extend_from_slice(&bytes[..nl]);
            self.emit(&partial);
            partial.clear();
            bytes = &bytes[nl + 1..];
        }
        partial.extend_from_slice(bytes);
        while partial.len() >= MAX_LINE {
            let rest = partial.split_off(MAX_LINE);
            self.emit(&partial);
            *partial = rest;
        }
    }

    /// Emits a final line without newline (when the instance goes away).
    pub(crate) fn flush_partial(&self) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        if !partial.is_empty() {
            self.emit(&partial);
            partial.clear();
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let ctx = Arc::new(LogContext {
            instance: "i1".into(),
            invocation: Mutex::new(Some("inv".into())),
            sink: Arc::new(move |r: LogRecord| g.lock().unwrap().push(r.line)),
        });
        let s = LogStream::new("stdout", ctx);
        s.push(b"hel");
        s.push(b"lo\nwor");
        s.push(b"ld\r\n");
        s.push(&vec![b'x'; MAX_LINE + 5]);
        s.flush_partial();
        let got = got.lock().unwrap();
        assert_eq!(got[0], "hello");
        assert_eq!(got[1], "world");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], "xxxxx");
    }
}
