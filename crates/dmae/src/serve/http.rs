//! The HTTP side of `dmae serve` on tiny_http: bounded request bodies, JSON and asset replies,
//! and the event stream of a sampling run written as one HTTP chunk per event (tiny_http's own
//! chunked writer buffers 8 KB before it sends anything, which would hold back small steps).

use std::io::{Read, Write};
use std::sync::mpsc::Receiver;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Request, Response};

use super::jobs::Event;

/// What a handler answers.
pub struct Reply {
    status: u16,
    content_type: &'static str,
    /// The body.
    pub body: Body,
}

/// A reply's body.
pub enum Body {
    /// Bytes known in full.
    Bytes(Vec<u8>),
    /// An embedded page asset.
    Static(&'static str),
    /// The events of a sampling run, sent as they come.
    Stream(Receiver<Event>),
}

impl Reply {
    /// An embedded asset.
    pub fn asset(text: &'static str, content_type: &'static str) -> Self {
        Self {
            status: 200,
            content_type,
            body: Body::Static(text),
        }
    }

    /// `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => Self {
                status: 200,
                content_type: "application/json",
                body: Body::Bytes(bytes),
            },
            Err(e) => Self::error(500, format!("cannot write the answer as JSON: {e}")),
        }
    }

    /// A PNG file.
    pub fn png(bytes: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: "image/png",
            body: Body::Bytes(bytes),
        }
    }

    /// An error: `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": message.into() }).to_string();
        Self {
            status,
            content_type: "application/json",
            body: Body::Bytes(body.into_bytes()),
        }
    }

    /// A sampling run's events.
    pub fn stream(events: Receiver<Event>) -> Self {
        Self {
            status: 200,
            content_type: "text/event-stream",
            body: Body::Stream(events),
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    // Only called with the constant names and values below, all valid ASCII.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

/// The page loads nothing from elsewhere, and says so to the browser.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// Sends a complete reply (a client that went away is not an error worth a line).
pub fn respond(request: Request, reply: Reply) {
    let bytes = match reply.body {
        Body::Bytes(b) => b,
        Body::Static(s) => s.as_bytes().to_vec(),
        Body::Stream(_) => unreachable!("streams go through stream_events"),
    };
    let response = Response::from_data(bytes)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Content-Security-Policy", CSP));
    let _ = request.respond(response);
}

/// Streams a run's events as server-sent events (`event: NAME`, `data: JSON`), one HTTP chunk
/// each, flushed at once. When the client goes away the receiver is dropped, which stops the
/// run at its next step.
pub fn stream_events(request: Request, events: Receiver<Event>) {
    let mut w = request.into_writer();
    let result = (|| -> std::io::Result<()> {
        w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
              X-Content-Type-Options: nosniff\r\nConnection: close\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )?;
        for event in events.iter() {
            let text = event.to_sse();
            write!(w, "{:x}\r\n{text}\r\n", text.len())?;
            w.flush()?;
        }
        w.write_all(b"0\r\n\r\n")?;
        w.flush()
    })();
    // A closed tab or a stopped `curl` is normal: the run stops with the dropped receiver.
    drop(result);
}

/// The request body, at most `limit` bytes; a larger one is refused with 413 before it is read
/// when its length is announced, or as soon as it passes the limit.
pub fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, Reply> {
    let too_large = |n: String| {
        Reply::error(
            413,
            format!(
                "the upload is {n}; this server takes at most {} (dmae serve --max-upload-mib)",
                human_bytes(limit)
            ),
        )
    };
    if let Some(n) = request.body_length() {
        if n > limit {
            return Err(too_large(human_bytes(n)));
        }
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Reply::error(400, format!("cannot read the request body: {e}")))?;
    if body.len() > limit {
        return Err(too_large(format!("more than {}", human_bytes(limit))));
    }
    Ok(body)
}

/// The request body as JSON of type `T`, at most `limit` bytes.
pub fn read_json<T: DeserializeOwned>(request: &mut Request, limit: usize) -> Result<T, Reply> {
    let body = read_body(request, limit)?;
    serde_json::from_slice(&body).map_err(|e| Reply::error(400, format!("bad request: {e}")))
}

/// `1.5 MiB`, `300 KiB`, `12 bytes`.
pub fn human_bytes(n: usize) -> String {
    let n = n as f64;
    if n >= (1 << 20) as f64 {
        format!("{:.1} MiB", n / (1 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.0} KiB", n / 1024.0)
    } else {
        format!("{n} bytes")
    }
}
