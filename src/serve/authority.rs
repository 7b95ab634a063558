//! Mends the HTTP/2 `:authority` of etcdctl's own dials.
//!
//! etcdctl 3.4 dials an endpoint on its own (`endpoint status`, `endpoint hashkv`, `move-leader`,
//! and every member with `--cluster`) with the endpoint string as the gRPC target, so a URL
//! (`http://host:port`) becomes the request's `:authority`. etcd's Go server takes it; hyper's
//! HTTP/2 server (`h2`) refuses the request as malformed (`RST_STREAM PROTOCOL_ERROR`), and `h2`
//! has no lenient mode (hyperium/h2#525).
//!
//! [`Mended`] sits between a connection and hyper and reads what the client sends. A connection
//! that does not open with the HTTP/2 preface is passed through from its first byte. An HTTP/2
//! connection's frames pass through unchanged until its first header block is complete; that
//! block is decoded (HPACK), and if its `:authority` has no scheme the rest of the connection is
//! passed through untouched. If it has one, every header block of the connection is decoded and
//! written again with the scheme (and any path) cut from the authority, as literals that never
//! enter the server's HPACK table (the client's table then lives here, in the decoder); every
//! other frame still passes through as it came. What the server writes is never touched.
//!
//! Bounds: a header block of at most [`HEADER_BLOCK_BYTES_MAX`] (and, before the first one is
//! complete, at most [`HEADER_FRAMES_BYTES_MAX`] of its frames held), decoding to a header list
//! of at most the server's own limit (`HEADER_LIST_BYTES_MAX`); anything this reader cannot
//! follow (a frame it does not expect, a block it cannot decode, a block too large) on a
//! connection it has not started mending is handed on as it came, for `h2` to judge; on a
//! connection it mends, it ends the connection with an I/O error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header's bytes.
const FRAME_HEADER_BYTES: usize = 9;
/// The largest header block (HEADERS and CONTINUATION payloads together) followed: the server's
/// own limit on the decoded header list, which counts each field 32 bytes more than its literal
/// encoding takes, so a longer block would not be taken anyway.
const HEADER_BLOCK_BYTES_MAX: usize = super::HEADER_LIST_BYTES_MAX;
/// The most bytes of header frames (frame headers and padding included) held as they came while
/// the first block is gathered: empty CONTINUATION frames add to these, not to the block.
const HEADER_FRAMES_BYTES_MAX: usize = 2 * HEADER_BLOCK_BYTES_MAX;
/// Header block fragments are written in frames of at most this many bytes: the smallest
/// SETTINGS_MAX_FRAME_SIZE a peer may set, so always allowed.
const FRAME_PAYLOAD_BYTES_MAX: usize = 16 * 1024;
/// The HPACK dynamic table the server's settings allow the client (h2's default).
const HPACK_TABLE_BYTES_MAX: usize = 4096;
/// Bytes read from the connection at a time while frames are looked at.
const READ_CHUNK_BYTES: usize = 16 * 1024;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A connection whose client-sent HTTP/2 header blocks get their `:authority` mended.
pub struct Mended<S> {
    inner: S,
    filter: Filter,
}

impl<S> Mended<S> {
    pub fn new(inner: S) -> Self {
        Mended {
            inner,
            filter: Filter::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Mended<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.filter.take_out(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.filter.passing() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The end of the connection: what is held goes on, then the end.
                this.filter.end()?;
                this.filter.take_out(buf);
                return Poll::Ready(Ok(()));
            }
            this.filter.feed(read.filled())?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Mended<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the first bytes: the HTTP/2 preface, or not.
    Preface,
    /// HTTP/2, no header block complete yet: frames pass through, header frames are held.
    Watch,
    /// The first block's authority had a scheme: every header block is written again.
    Mend,
    /// Everything passes through.
    Pass,
}

/// The byte-stream side of [`Mended`], apart from I/O so it can be tested byte by byte.
struct Filter {
    mode: Mode,
    /// Bytes read and not yet looked at.
    input: Vec<u8>,
    /// Bytes for the server, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    /// Payload bytes of the current non-header frame still to pass through.
    passing_left: usize,
    /// The header block being gathered: its frames as they came (Watch), its fragments
    /// (without padding or priority), and its HEADERS frame's stream, flags and priority.
    raw: Vec<u8>,
    block: Vec<u8>,
    head: Option<BlockHead>,
    decoder: Option<loona_hpack::Decoder<'static>>,
}

#[derive(Clone, Copy)]
struct BlockHead {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            mode: Mode::Preface,
            input: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            passing_left: 0,
            raw: Vec::new(),
            block: Vec::new(),
            head: None,
            decoder: None,
        }
    }
}

/// Why a connection being mended is ended.
fn broken(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("http/2 authority mend: {why}"),
    )
}

impl Filter {
    /// Whether reads may go straight to the connection (nothing held, nothing to mend).
    fn passing(&self) -> bool {
        self.mode == Mode::Pass && self.out_at == self.out.len()
    }

    /// Moves bytes for the server into `buf`; false if there were none.
    fn take_out(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.out[self.out_at..];
        if pending.is_empty() || buf.remaining() == 0 {
            return false;
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        true
    }

    /// The connection ended: whatever is held goes on as it came (h2 sees the cut), except on
    /// a connection being mended, whose held bytes the server could not read anyway.
    fn end(&mut self) -> io::Result<()> {
        if self.mode == Mode::Mend {
            if !self.input.is_empty() || self.head.is_some() {
                return Err(broken("connection ended inside a header frame"));
            }
            return Ok(());
        }
        self.give_up();
        self.out.append(&mut self.input);
        Ok(())
    }

    /// Stops looking: the held header frames go on unchanged, and so does everything after
    /// them (`feed` hands on the input not looked at yet).
    fn give_up(&mut self) {
        self.out.append(&mut self.raw);
        self.block = Vec::new();
        self.head = None;
        self.decoder = None;
        self.mode = Mode::Pass;
    }

    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.mode == Mode::Pass {
            self.out.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        let result = self.frames(&mut at);
        self.input.drain(..at);
        if self.mode == Mode::Pass {
            self.out.append(&mut self.input);
        }
        result
    }

    /// Looks at the whole frames in `input` from `at`, moving `at` past what it used.
    fn frames(&mut self, at: &mut usize) -> io::Result<()> {
        loop {
            let input = &self.input[*at..];
            match self.mode {
                Mode::Pass => return Ok(()),
                Mode::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input[..n] != PREFACE[..n] {
                        self.mode = Mode::Pass;
                        return Ok(());
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.out.extend_from_slice(PREFACE);
                    *at += PREFACE.len();
                    self.mode = Mode::Watch;
                }
                Mode::Watch | Mode::Mend => {
                    if self.passing_left > 0 {
                        let n = self.passing_left.min(input.len());
                        if n == 0 {
                            return Ok(());
                        }
                        self.out.extend_from_slice(&input[..n]);
                        self.passing_left -= n;
                        *at += n;
                        continue;
                    }
                    if input.len() < FRAME_HEADER_BYTES {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
                    let kind = input[3];
                    if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                        if self.head.is_some() {
                            // Only CONTINUATION may follow an unfinished block: h2's to refuse.
                            return self.cannot_follow("a frame inside a header block");
                        }
                        self.out.extend_from_slice(&input[..FRAME_HEADER_BYTES]);
                        self.passing_left = len;
                        *at += FRAME_HEADER_BYTES;
                        continue;
                    }
                    if len > HEADER_BLOCK_BYTES_MAX
                        || self.block.len() + len > HEADER_BLOCK_BYTES_MAX
                        || self.raw.len() + FRAME_HEADER_BYTES + len > HEADER_FRAMES_BYTES_MAX
                    {
                        return self.cannot_follow("header block too large");
                    }
                    if input.len() < FRAME_HEADER_BYTES + len {
                        return Ok(());
                    }
                    let frame = input[..FRAME_HEADER_BYTES + len].to_vec();
                    *at += frame.len();
                    self.header_frame(&frame)?;
                }
            }
        }
    }

    /// What cannot be followed: handed on as it came before mending began, the end after.
    fn cannot_follow(&mut self, why: &str) -> io::Result<()> {
        if self.mode == Mode::Mend {
            return Err(broken(why));
        }
        self.give_up();
        Ok(())
    }

    /// One whole HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER_BYTES..];
        if self.mode == Mode::Watch {
            self.raw.extend_from_slice(frame);
        }
        match (kind, self.head) {
            (TYPE_HEADERS, None) => {
                if flags & FLAG_PADDED != 0 {
                    let Some((&pad, rest)) = payload.split_first() else {
                        return self.cannot_follow("padded frame without its pad length");
                    };
                    if usize::from(pad) > rest.len() {
                        return self.cannot_follow("padding longer than the frame");
                    }
                    payload = &rest[..rest.len() - usize::from(pad)];
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    let Some((p, rest)) = payload.split_first_chunk::<5>() else {
                        return self.cannot_follow("priority fields cut short");
                    };
                    priority = Some(*p);
                    payload = rest;
                }
                self.head = Some(BlockHead {
                    stream,
                    flags,
                    priority,
                });
            }
            (TYPE_CONTINUATION, Some(head)) if head.stream == stream => {}
            _ => return self.cannot_follow("a header frame out of place"),
        }
        self.block.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.block_done()?;
        }
        Ok(())
    }

    /// A whole header block: decoded; in Watch, the connection's fate is decided by it.
    fn block_done(&mut self) -> io::Result<()> {
        let Some(head) = self.head.take() else {
            return Ok(());
        };
        let block = std::mem::take(&mut self.block);
        let decoder = self.decoder.get_or_insert_with(|| {
            let mut d = loona_hpack::Decoder::new();
            d.set_max_allowed_table_size(HPACK_TABLE_BYTES_MAX);
            d
        });
        // A small block may name large table entries many times: the list is counted as it
        // is decoded, and nothing is kept once it is over the server's own limit.
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut list_bytes = 0usize;
        let decoded = decoder.decode_with_cb(&block, |name, value| {
            list_bytes = list_bytes.saturating_add(name.len() + value.len() + 32);
            if list_bytes <= super::HEADER_LIST_BYTES_MAX {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        if decoded.is_err() {
            return self.cannot_follow("header block not decodable");
        }
        if list_bytes > super::HEADER_LIST_BYTES_MAX {
            return self.cannot_follow("header list too large");
        }
        let mut mended = false;
        for (name, value) in &mut fields {
            if name == b":authority"
                && let Some(host) = authority_without_scheme(value)
            {
                *value = host;
                mended = true;
            }
        }
        if self.mode == Mode::Watch {
            if !mended {
                self.give_up();
                return Ok(());
            }
            tracing::debug!("mending a URL sent as the HTTP/2 :authority (etcdctl)");
            self.raw.clear();
            self.mode = Mode::Mend;
        }
        self.write_block(head, &fields);
        Ok(())
    }

    /// Writes a header block again: every field a literal never added to the server's table,
    /// in frames of at most [`FRAME_PAYLOAD_BYTES_MAX`].
    fn write_block(&mut self, head: BlockHead, fields: &[(Vec<u8>, Vec<u8>)]) {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00); // literal header field without indexing, new name (RFC 7541 §6.2.2)
            put_string(&mut block, name);
            put_string(&mut block, value);
        }
        let mut first = Vec::with_capacity(5 + FRAME_PAYLOAD_BYTES_MAX);
        let mut flags = head.flags & FLAG_END_STREAM;
        if let Some(p) = head.priority {
            flags |= FLAG_PRIORITY;
            first.extend_from_slice(&p);
        }
        let room = FRAME_PAYLOAD_BYTES_MAX - first.len();
        let (now, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(now);
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        self.put_frame(TYPE_HEADERS, flags, head.stream, &first);
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(FRAME_PAYLOAD_BYTES_MAX));
            let flags = if later.is_empty() {
                FLAG_END_HEADERS
            } else {
                0
            };
            self.put_frame(TYPE_CONTINUATION, flags, head.stream, now);
            rest = later;
        }
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = (payload.len() as u32).to_be_bytes();
        self.out.extend_from_slice(&len[1..]);
        self.out.push(kind);
        self.out.push(flags);
        self.out.extend_from_slice(&stream.to_be_bytes());
        self.out.extend_from_slice(payload);
    }
}

/// `host:port` of an authority sent as a URL (`http://host:port/...`), or None if it has no
/// scheme.
fn authority_without_scheme(value: &[u8]) -> Option<Vec<u8>> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

/// An HPACK string literal without Huffman coding: its length as a 7-bit-prefix integer, then
/// its bytes (RFC 7541 §5.1, §5.2).
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 0x7f {
        out.push(n as u8);
    } else {
        out.push(0x7f);
        n -= 0x7f;
        while n >= 0x80 {
            out.push((n % 0x80) as u8 | 0x80);
            n /= 0x80;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests;
