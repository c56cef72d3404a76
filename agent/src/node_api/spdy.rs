//! SPDY/3.1 server sessions, as far as Kubernetes clients use them: the
//! streams of `kubectl exec` before 1.30 and of every `kubectl
//! port-forward` (over an HTTP upgrade, or tunnelled in a WebSocket).
//!
//! The client opens streams (SYN_STREAM with name/value headers such as
//! `streamType: stdout`); each is answered with an empty SYN_REPLY; data
//! flows both ways in data frames; FIN ends a direction, RST_STREAM both.
//! PINGs are echoed, GOAWAY ends the session. Header blocks are zlib
//! streams (one per direction for the whole session) primed with the
//! protocol's dictionary. Flow-control windows are neither kept nor sent:
//! the Go implementation Kubernetes clients use (spdystream) keeps none.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status CANCEL.
const CANCEL: u32 = 5;
/// The largest frame payload (24-bit length).
const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// The largest header block accepted after inflation.
const MAX_HEADERS: usize = 256 * 1024;

/// The header compression dictionary of SPDY/3 (length-prefixed header
/// names and values, then common value fragments).
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// One direction's header block codec (stateful for the whole session).
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .expect("a fresh deflate stream takes a dictionary");
        HeaderCodec {
            inflate: Decompress::new(true),
            deflate,
        }
    }
}

impl HeaderCodec {
    /// A name/value header block, compressed.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>, String> {
        let mut block = Vec::new();
        block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k.to_ascii_lowercase().as_str(), v] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut pos = 0;
        for _ in 0..64 {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| format!("compress headers: {e}"))?;
            pos += (self.deflate.total_in() - before) as usize;
            if pos == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
        Err("compress headers: no progress".into())
    }

    /// A compressed name/value header block: the pairs (names lower
    /// case; several values of one name are NUL-separated).
    pub fn decode(&mut self, compressed: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut pos = 0;
        let mut done = false;
        for _ in 0..256 {
            let before = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(&compressed[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| format!("header dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("inflate headers: {e}")),
            }
            pos += (self.inflate.total_in() - before) as usize;
            if out.len() > MAX_HEADERS {
                return Err(format!("header block larger than {MAX_HEADERS} bytes"));
            }
            if pos == compressed.len() && out.len() < out.capacity() {
                done = true;
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        if !done {
            return Err("inflate headers: no progress".into());
        }
        parse_block(&out)
    }
}

/// Reads an inflated name/value block (pure).
fn parse_block(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let u32_at = |at: usize| {
        b.get(at..at + 4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    };
    let count = u32_at(0).ok_or("empty header block")?;
    let mut at = 4;
    let mut next = || -> Result<String, String> {
        let len = u32_at(at).ok_or("header block ends before a length")?;
        let s = b
            .get(at + 4..at + 4 + len)
            .ok_or("header longer than its block")?;
        at += 4 + len;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    let mut pairs = Vec::new();
    for _ in 0..count.min(1024) {
        let name = next()?;
        pairs.push((name, next()?));
    }
    Ok(pairs)
}

/// A stream the client opened.
#[derive(Debug)]
pub struct Stream {
    /// Its ID.
    pub id: u32,
    /// Its headers (names lower case).
    pub headers: Vec<(String, String)>,
    /// What the client sends on it; closed at the client's FIN or reset.
    pub data: mpsc::Receiver<Vec<u8>>,
}

impl Stream {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Reset(u32),
    Ping(u32),
    GoAway,
}

/// Sends on a session's streams (cheap to clone).
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Out>);

impl Sender {
    /// Accepts stream `id` (an empty SYN_REPLY).
    pub async fn reply(&self, id: u32) {
        let _ = self.0.send(Out::Reply(id)).await;
    }
    /// Sends `data` on stream `id`; false once the session is gone.
    pub async fn data(&self, id: u32, data: Vec<u8>) -> bool {
        self.0.send(Out::Data(id, data, false)).await.is_ok()
    }
    /// Ends this side of stream `id` (FIN).
    pub async fn fin(&self, id: u32) {
        let _ = self.0.send(Out::Data(id, Vec::new(), true)).await;
    }
    /// Resets stream `id` (both directions end).
    pub async fn reset(&self, id: u32) {
        let _ = self.0.send(Out::Reset(id)).await;
    }
    /// Ends the session: GOAWAY, then the connection's write side closes.
    pub async fn goaway(&self) {
        let _ = self.0.send(Out::GoAway).await;
    }
}

/// A server session: what to send with, and the streams the client opens.
pub struct Session {
    /// Sends on streams.
    pub sender: Sender,
    /// The streams the client opens, in order; ends with the connection.
    pub incoming: mpsc::Receiver<Stream>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Serves a SPDY session on `io` (after the HTTP upgrade).
pub fn serve<IO>(io: IO) -> Session
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let (in_tx, incoming) = mpsc::channel::<Stream>(16);
    tokio::spawn(async move {
        let mut codec = HeaderCodec::default();
        let mut last = 0u32;
        while let Some(o) = out_rx.recv().await {
            let frame = match o {
                Out::Reply(id) => match codec.encode(&[]) {
                    Ok(block) => {
                        let mut p = id.to_be_bytes().to_vec();
                        p.extend_from_slice(&block);
                        control(SYN_REPLY, 0, &p)
                    }
                    Err(e) => {
                        tracing::debug!("spdy: {e}");
                        break;
                    }
                },
                Out::Data(id, d, fin) => {
                    last = last.max(id);
                    let mut f = Vec::with_capacity(d.len() + 8);
                    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                    let flags = if fin { FLAG_FIN } else { 0 };
                    f.extend_from_slice(&((u32::from(flags) << 24) | d.len() as u32).to_be_bytes());
                    f.extend_from_slice(&d);
                    f
                }
                Out::Reset(id) => {
                    let mut p = id.to_be_bytes().to_vec();
                    p.extend_from_slice(&CANCEL.to_be_bytes());
                    control(RST_STREAM, 0, &p)
                }
                Out::Ping(id) => control(PING, 0, &id.to_be_bytes()),
                Out::GoAway => {
                    let mut p = last.to_be_bytes().to_vec();
                    p.extend_from_slice(&0u32.to_be_bytes());
                    let _ = wr.write_all(&control(GOAWAY, 0, &p)).await;
                    break;
                }
            };
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let pings = Sender(out_tx.clone());
    let reader = tokio::spawn(async move {
        let mut codec = HeaderCodec::default();
        let mut streams: std::collections::HashMap<u32, mpsc::Sender<Vec<u8>>> =
            std::collections::HashMap::new();
        loop {
            let mut head = [0u8; 8];
            if rd.read_exact(&mut head).await.is_err() {
                break;
            }
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            if len > MAX_PAYLOAD {
                break;
            }
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                break;
            }
            if head[0] & 0x80 == 0 {
                // A data frame.
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                if let Some(tx) = streams.get(&id) {
                    if !payload.is_empty() {
                        let _ = tx.send(payload).await;
                    }
                    if flags & FLAG_FIN != 0 {
                        streams.remove(&id);
                    }
                }
                continue;
            }
            let kind = u16::from_be_bytes([head[2], head[3]]);
            let id = |p: &[u8]| {
                p.get(..4)
                    .map(|b| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]))
            };
            match kind {
                SYN_STREAM if payload.len() >= 10 => {
                    let Some(sid) = id(&payload) else { break };
                    let headers = match codec.decode(&payload[10..]) {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::debug!("spdy: stream {sid}: {e}");
                            break;
                        }
                    };
                    let (tx, rx) = mpsc::channel(16);
                    if flags & FLAG_FIN == 0 {
                        streams.insert(sid, tx);
                    }
                    let s = Stream {
                        id: sid,
                        headers,
                        data: rx,
                    };
                    if in_tx.send(s).await.is_err() {
                        break;
                    }
                }
                RST_STREAM => {
                    if let Some(sid) = id(&payload) {
                        streams.remove(&sid);
                    }
                }
                PING => {
                    if let Some(p) = id(&payload) {
                        let _ = pings.0.send(Out::Ping(p)).await;
                    }
                }
                GOAWAY => break,
                _ => {} // SETTINGS, WINDOW_UPDATE, HEADERS, NOOP: nothing to do.
            }
        }
    });
    Session {
        sender: Sender(out_tx),
        incoming,
        reader,
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        // Length and Adler-32 of the SPDY/3 dictionary.
        assert_eq!(DICTIONARY.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY.iter() {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let (mut client, mut server) = (HeaderCodec::default(), HeaderCodec::default());
        for i in 0..3 {
            let port = format!("80{i}");
            let block = client
                .encode(&[("streamType", "data"), ("port", &port), ("requestID", "0")])
                .unwrap();
            let h = server.decode(&block).unwrap();
            assert_eq!(
                h,
                [
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".into(), port.clone()),
                    ("requestid".into(), "0".into())
                ]
            );
        }
        assert!(server.decode(b"garbage").is_err());
        assert!(parse_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'x']).is_err());
    }

    #[tokio::test]
    async fn a_session_accepts_streams_echoes_pings_and_carries_data() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut session = serve(server);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut codec = HeaderCodec::default();
        let block = codec.encode(&[("streamType", "stdout")]).unwrap();
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&block);
        cwr.write_all(&control(SYN_STREAM, 0, &p)).await.unwrap();
        cwr.write_all(&control(PING, 0, &7u32.to_be_bytes()))
            .await
            .unwrap();
        // Data from the client, then its FIN.
        let mut d = 1u32.to_be_bytes().to_vec();
        d.extend_from_slice(&((u32::from(FLAG_FIN) << 24) | 2).to_be_bytes());
        d.extend_from_slice(b"hi");
        cwr.write_all(&d).await.unwrap();
        let mut s = session.incoming.recv().await.unwrap();
        assert_eq!((s.id, s.header("streamtype")), (1, Some("stdout")));
        assert_eq!(s.data.recv().await.unwrap(), b"hi");
        assert!(s.data.recv().await.is_none(), "FIN ends the stream");
        session.sender.reply(1).await;
        assert!(session.sender.data(1, b"out".to_vec()).await);
        session.sender.fin(1).await;
        session.sender.goaway().await;
        let mut got = Vec::new();
        crd.read_to_end(&mut got).await.unwrap();
        // PING echoed, SYN_REPLY, data, FIN, GOAWAY in that order.
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 8 <= got.len() {
            let len = u32::from_be_bytes([0, got[at + 5], got[at + 6], got[at + 7]]) as usize;
            let kind = if got[at] & 0x80 != 0 {
                u16::from_be_bytes([got[at + 2], got[at + 3]])
            } else {
                0
            };
            frames.push((kind, got[at + 4], got[at + 8..at + 8 + len].to_vec()));
            at += 8 + len;
        }
        assert_eq!(at, got.len());
        let kinds: Vec<(u16, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [
                (PING, 0),
                (SYN_REPLY, 0),
                (0, 0),
                (0, FLAG_FIN),
                (GOAWAY, 0)
            ]
        );
        assert_eq!(frames[0].2, 7u32.to_be_bytes());
        assert_eq!(frames[2].2, b"out");
        // The reply's header block is an empty one the client can read.
        assert_eq!(codec_reply(&frames[1].2), Vec::<(String, String)>::new());
    }

    fn codec_reply(p: &[u8]) -> Vec<(String, String)> {
        HeaderCodec::default().decode(&p[4..]).unwrap()
    }
}
