//! Upstream HTTP/1.1 connections used as bytes, for the listeners' short way
//! (`inbound::passthrough`): a request written whole, the answer's head read
//! and rewritten (`http1::response_head`), its body copied to the client as
//! it comes, framing and all. The stream is a plain TCP connection (the web
//! backend, a peer without `--cluster-tls`) or a TLS one to a peer
//! ([`PeerStream`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::http1::{self, Answer, Chunked, Framing, ResponseHead};
use crate::outbound::pool::{self, Reusable};

/// The largest response head read, with or without its interim answers.
const MAX_HEAD: usize = 64 * 1024;

/// A kept-alive upstream connection, what was read from it, and when it last
/// went idle.
pub struct Backend<S> {
    pub stream: S,
    pub buf: BytesMut,
    pub since: Instant,
    /// The last [`send`] read something back: the upstream answered, so the
    /// request may have been acted on (never sent again).
    pub answered: bool,
}

impl<S> Backend<S> {
    pub fn new(stream: S, since: Instant) -> Self {
        Backend {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            since,
            answered: false,
        }
    }
}

/// Why an upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Connect(#[from] pool::ConnectError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before an answer")]
    Closed,
    #[error("a response head over 64 KiB")]
    HeadTooLarge,
    #[error("{0}")]
    BadHead(&'static str),
}

/// Why an exchange with an upstream failed.
pub enum Failed {
    /// Before anything reached the client: it gets a 502 and the connection goes on.
    Early(BackendError),
    /// Midway: the client's connection is closed, as the upstream's was.
    Late,
}

/// Writes `request` on `b` and reads the answer's head (interim answers are
/// dropped, as hyper's client does: the short way never asks for one).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    b: &mut Backend<S>,
    request: &[u8],
    head_method: bool,
) -> Result<ResponseHead, BackendError> {
    b.answered = !b.buf.is_empty();
    b.stream.write_all(request).await?;
    // (a TLS stream may hold the tail of a record back until flushed)
    b.stream.flush().await?;
    loop {
        match http1::response_head(&b.buf, head_method).map_err(BackendError::BadHead)? {
            Answer::Final(n, r) => {
                b.buf.advance(n);
                return Ok(r);
            }
            Answer::Interim(n) => b.buf.advance(n),
            Answer::Partial if b.buf.len() < MAX_HEAD => match b.stream.read_buf(&mut b.buf).await?
            {
                0 => return Err(BackendError::Closed),
                _ => b.answered = true,
            },
            Answer::Partial => return Err(BackendError::HeadTooLarge),
        }
    }
}

/// Sends `head` and the body after it in `b.buf` to the client, reading more
/// from the upstream until the body ends. Says whether it ended where its
/// framing said (false: it ended with the upstream's connection).
pub async fn copy_body<S: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    b: &mut Backend<S>,
    framing: Framing,
    mut out: Vec<u8>,
    client: &mut C,
) -> Result<bool, Failed> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunked = Chunked::default();
    let mut first = true;
    loop {
        // How much of what is buffered belongs to this body, and whether it ends there.
        let (take, ended) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = left.min(b.buf.len() as u64);
                left -= n;
                (n as usize, left == 0)
            }
            Framing::Chunked => chunked.feed(&b.buf).map_err(|_| Failed::Late)?,
            Framing::UntilClose => (b.buf.len(), false),
        };
        let wrote = if first {
            out.extend_from_slice(&b.buf[..take]);
            client.write_all(&out).await
        } else {
            client.write_all(&b.buf[..take]).await
        };
        let wrote = match wrote {
            Ok(()) => client.flush().await,
            Err(e) => Err(e),
        };
        // Nothing has reached the client only if the first write failed, and
        // then the client is gone: either way its connection ends.
        wrote.map_err(|_| Failed::Late)?;
        first = false;
        b.buf.advance(take);
        if ended {
            return Ok(true);
        }
        match b.stream.read_buf(&mut b.buf).await {
            Ok(0) if framing == Framing::UntilClose => return Ok(false),
            Ok(0) | Err(_) => return Err(Failed::Late),
            Ok(_) => {}
        }
    }
}

/// Copies the answer whose head is `resp` to the client (`close`: the client
/// asked to close). Says whether the client's connection goes on, and gives
/// `b` back when it may carry the next request.
pub async fn deliver<S: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    mut b: Backend<S>,
    resp: ResponseHead,
    close: bool,
    client: &mut C,
) -> Result<(bool, Option<Backend<S>>), Failed> {
    let keep_client = !close && resp.framing != Framing::UntilClose;
    let mut out = resp.head;
    if !keep_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let ended = copy_body(&mut b, resp.framing, out, client).await?;
    let back = (ended && resp.reuse && b.buf.is_empty()).then(|| {
        b.since = Instant::now();
        b
    });
    Ok((keep_client && ended, back))
}

/// Reads and drops a response body of known length (a refusal the short way
/// answers itself), so the connection can carry the next request. False when
/// it cannot (no length, too long to bother, not here within a second, or
/// more after it): then the connection is not to be kept.
pub async fn skip_body<S: AsyncRead + Unpin>(b: &mut Backend<S>, framing: Framing) -> bool {
    let left = match framing {
        Framing::Empty => return b.buf.is_empty(),
        Framing::Length(n) if n <= 64 * 1024 => n as usize,
        _ => return false,
    };
    let read = async {
        while b.buf.len() < left {
            match b.stream.read_buf(&mut b.buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    let whole = tokio::time::timeout(std::time::Duration::from_secs(1), read)
        .await
        .unwrap_or(false);
    if !whole {
        return false;
    }
    b.buf.advance(left);
    b.buf.is_empty()
}

/// A connection to a peer's cluster listener: plain, or TLS (`--cluster-tls`).
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl PeerStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Tls(s) => s.get_ref().0,
        }
    }
}

/// As for a plain stream: usable while there is nothing to read and it is
/// open. A TLS connection with something to read (it should have nothing:
/// the listener sends no tickets) loses a byte to the probe and is dropped.
impl Reusable for PeerStream {
    fn usable(&self) -> bool {
        self.tcp().usable()
    }

    fn closed(&self) -> bool {
        false
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
