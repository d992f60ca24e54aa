//! A guard between the socket and pgwire's frame decoder: every frontend message is checked
//! against its layout (PostgreSQL docs "55.7. Message Formats") before pgwire decodes it.
//!
//! pgwire's decoders read a message's fields from the connection's whole read buffer with
//! `Buf::get_*`, which panics past its end, and without stopping at the message's length: a
//! `Bind` that claims more parameters than it holds panics the connection's task, or reads
//! into the next message and loses the framing. PostgreSQL answers such a message with
//! `08P01 invalid message format` and closes the connection; the guard does the same (the
//! ErrorResponse, then end of stream to pgwire, which closes), so pgwire only ever decodes
//! messages that fit their frame exactly. A frame that claims more than the limit is refused
//! from its 5-byte header, before anything is buffered for it.
//!
//! The guard sits under TLS ([`serve`] negotiates TLS first, then guards the plain-text
//! stream). It follows the server's side for one thing: after `AuthenticationSASL` the next
//! password message must be a well-formed `SASLInitialResponse`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

/// The longest frontend message the daemon takes by default: PostgreSQL's limit
/// (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB - 1). The guard buffers a frame only as its bytes arrive,
/// so a frame that merely claims to be long allocates nothing.
pub const MAX_FRAME_BYTES: usize = (1 << 30) - 1;

/// PostgreSQL's limit on a start-up packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_PACKET: usize = 10_000;

/// How long a client may take from connecting to finishing authentication (pgwire's own
/// start-up timeout).
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the guard expects next from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Untyped start-up packets (length, then body) until a `StartupMessage`.
    Startup,
    /// Typed messages (type byte, length, body).
    Typed,
}

/// See the module docs. `S` is the plain-text stream.
pub struct FrameGuard<S> {
    inner: S,
    /// Bytes read from `inner`; the first `ready` of them were checked and go to the reader.
    buf: BytesMut,
    ready: usize,
    phase: Phase,
    max_frame: usize,
    /// The server asked for SASL: the next password message is a `SASLInitialResponse`.
    sasl_initial: bool,
    /// Parsing of what the server writes: bytes of the current backend message's header (type,
    /// length, and for `R` the authentication code) and bytes of its body still to skip.
    out_header: Vec<u8>,
    out_skip: usize,
    /// The refusal: the ErrorResponse still to write, then end of stream.
    refused: Option<BytesMut>,
}

impl<S> FrameGuard<S> {
    /// A guard over `inner` that refuses frames longer than `max_frame` bytes; `leftover` is
    /// what was already read from the stream (pgwire's read buffer after TLS negotiation).
    pub fn new(inner: S, leftover: BytesMut, max_frame: usize) -> FrameGuard<S> {
        FrameGuard { inner, buf: leftover, ready: 0, phase: Phase::Startup, max_frame, sasl_initial: false, out_header: Vec::new(), out_skip: 0, refused: None }
    }

    /// The length of the next complete frame in `buf` once it is all there, checked; None
    /// while more bytes are needed.
    fn next_frame(&mut self) -> Result<Option<usize>, String> {
        let (header, len) = match self.phase {
            Phase::Startup => {
                if self.buf.len() < 4 {
                    return Ok(None);
                }
                let len = i32::from_be_bytes(self.buf[0..4].try_into().unwrap());
                if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
                    return Err(format!("invalid length of startup packet: {len}"));
                }
                (0, len as usize)
            }
            Phase::Typed => {
                if self.buf.len() < 5 {
                    return Ok(None);
                }
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap());
                if len < 4 {
                    return Err(format!("invalid message length {len}"));
                }
                if len as usize > self.max_frame {
                    return Err(format!("message of {len} bytes is longer than the limit of {} bytes", self.max_frame));
                }
                (1, len as usize)
            }
        };
        let total = header + len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = self.buf[..total].to_vec();
        match self.phase {
            Phase::Startup => {
                let code = i32::from_be_bytes(frame[4..8].try_into().unwrap());
                check_startup(code, &frame[8..])?;
                if code >> 16 == 3 {
                    self.phase = Phase::Typed;
                }
            }
            Phase::Typed => {
                check_typed(frame[0], &frame[5..], self.sasl_initial)?;
                if frame[0] == b'p' {
                    self.sasl_initial = false;
                }
            }
        }
        Ok(Some(total))
    }

    /// Follows the backend messages in `written` (see the struct docs).
    fn watch_output(&mut self, mut written: &[u8]) {
        while !written.is_empty() {
            if self.out_skip > 0 {
                let n = self.out_skip.min(written.len());
                self.out_skip -= n;
                written = &written[n..];
                continue;
            }
            self.out_header.push(written[0]);
            written = &written[1..];
            let h = &self.out_header;
            if h.len() < 5 {
                continue;
            }
            let len = i32::from_be_bytes(h[1..5].try_into().unwrap()).max(4) as usize;
            if h[0] == b'R' && len >= 8 && h.len() < 9 {
                continue;
            }
            if h[0] == b'R' && h.len() == 9 {
                self.sasl_initial = i32::from_be_bytes(h[5..9].try_into().unwrap()) == 10;
            }
            self.out_skip = (len + 1).saturating_sub(h.len());
            self.out_header.clear();
        }
    }
}

/// Checks a start-up packet's body: a `StartupMessage` (protocol 3.x: name/value pairs, then a
/// zero byte), a `CancelRequest` (process id and secret key), or an 8-byte negotiation request.
fn check_startup(code: i32, body: &[u8]) -> Result<(), String> {
    match code {
        80_877_102 => {
            if !(8..=260).contains(&body.len()) {
                return Err("invalid CancelRequest".into());
            }
        }
        80_877_103 | 80_877_104 => {
            if !body.is_empty() {
                return Err("invalid SSLRequest or GSSENCRequest".into());
            }
        }
        c if c >> 16 == 3 => {
            let mut r = Reader(body);
            loop {
                let name = r.cstring()?;
                if name.is_empty() {
                    break;
                }
                r.cstring()?;
            }
            r.end("StartupMessage")?;
        }
        // pgwire refuses other protocol versions itself.
        _ => {}
    }
    Ok(())
}

/// Checks a typed message's body against its layout.
fn check_typed(kind: u8, body: &[u8], sasl_initial: bool) -> Result<(), String> {
    let mut r = Reader(body);
    let name = match kind {
        b'Q' => {
            r.cstring()?;
            "Query"
        }
        b'P' => {
            r.cstring()?;
            r.cstring()?;
            let n = r.u16()?;
            r.take(4 * n as usize)?;
            "Parse"
        }
        b'B' => {
            r.cstring()?;
            r.cstring()?;
            let formats = r.u16()?;
            r.take(2 * formats as usize)?;
            for _ in 0..r.u16()? {
                let len = r.i32()?;
                if len >= 0 {
                    r.take(len as usize)?;
                } else if len != -1 {
                    return Err(format!("invalid parameter length {len} in Bind"));
                }
            }
            let results = r.i16()?;
            if results < 0 {
                return Err("invalid result format count in Bind".into());
            }
            r.take(2 * results as usize)?;
            "Bind"
        }
        b'E' => {
            r.cstring()?;
            r.i32()?;
            "Execute"
        }
        b'D' | b'C' => {
            let target = r.take(1)?[0];
            if target != b'S' && target != b'P' {
                return Err(format!("invalid {} target {}", if kind == b'D' { "Describe" } else { "Close" }, target as char));
            }
            r.cstring()?;
            "Describe/Close"
        }
        b'f' => {
            r.cstring()?;
            "CopyFail"
        }
        b'S' | b'H' | b'c' | b'X' => "Sync/Flush/CopyDone/Terminate",
        b'p' if sasl_initial => {
            r.cstring()?;
            let len = r.i32()?;
            if len >= 0 {
                r.take(len as usize)?;
            }
            "SASLInitialResponse"
        }
        // A password or SASL response (raw bytes), CopyData, or a type pgwire refuses itself.
        _ => return Ok(()),
    };
    r.end(name)
}

/// Reads a message body's fields, never past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("a field claims {n} bytes but {} remain", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn cstring(&mut self) -> Result<&'a [u8], String> {
        let end = self.0.iter().position(|b| *b == 0).ok_or("a string is not terminated")?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn end(&self, name: &str) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes after the end of {name}", self.0.len()))
        }
    }
}

/// PostgreSQL's answer to a malformed message: a FATAL ErrorResponse 08P01.
fn error_response(message: &str) -> BytesMut {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "08P01"), (b'M', message)] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(b'E');
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(pending) = &mut this.refused {
                // Write the ErrorResponse, then report end of stream: pgwire closes.
                while pending.has_remaining() {
                    match Pin::new(&mut this.inner).poll_write(cx, pending) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => pending.clear(),
                        Poll::Ready(Ok(n)) => pending.advance(n),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                return Poll::Ready(Ok(()));
            }
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            match this.next_frame() {
                Ok(Some(len)) => {
                    this.ready = len;
                    continue;
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(reason = %reason, "invalid message from a client; connection closed");
                    this.buf.clear();
                    this.refused = Some(error_response(&format!("invalid message format: {reason}")));
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // End of stream; an incomplete frame is dropped.
                        return Poll::Ready(Ok(()));
                    }
                    this.buf.extend_from_slice(rb.filled());
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.watch_output(&data[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one client connection as pgwire's `process_socket` does (TLS negotiation, start-up
/// timeout, the message loop), with every frontend message checked by a [`FrameGuard`]
/// refusing frames over `max_frame` bytes.
///
/// Errors: the socket failed.
pub async fn serve<H>(socket: TcpStream, tls: Option<pgwire::tokio::TlsAcceptor>, handlers: H, max_frame: usize) -> io::Result<()>
where
    H: PgWireServerHandlers,
{
    let negotiated = tokio::time::timeout(STARTUP_TIMEOUT, negotiate_tls(socket, tls)).await;
    let Ok(negotiated) = negotiated else { return Ok(()) };
    let Some(framed) = negotiated? else { return Ok(()) };
    let parts = framed.into_parts();
    let guard = FrameGuard::new(parts.io, parts.read_buf, max_frame);
    let mut new_parts = FramedParts::new(guard, parts.codec);
    new_parts.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(new_parts);
    socket.set_state(PgWireConnectionState::AwaitingStartup);

    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let msg = if matches!(socket.state(), PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress) {
            tokio::select! {
                _ = &mut deadline => None,
                m = socket.next() => m,
            }
        } else {
            socket.next().await
        };
        let Some(Ok(msg)) = msg else { break };
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(e) => e,
            _ => msg.is_extended_query(),
        };
        if let Err(mut e) =
            process_message(msg, &mut socket, startup.clone(), simple.clone(), extended.clone(), copy.clone(), cancel.clone()).await
        {
            errors.on_error(&socket, &mut e);
            process_error(&mut socket, e, extended_query).await?;
        }
    }
    let _ = socket.close().await;
    Ok(())
}
