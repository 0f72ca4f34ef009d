//! The HTTP/2 front of our gRPC servers on unix sockets: it makes the `:authority` that gRPC
//! clients send on a unix socket acceptable to the HTTP/2 server under tonic.
//!
//! grpc C-core (Python, C++, Ruby, PHP, C#) dials `unix:///run/corral/corral.sock` with
//! `:authority: run%2Fcorral%2Fcorral.sock`, grpc-java with the raw path. The `h2` crate parses
//! `:authority` as a URI authority, which allows neither `%` nor `/`, and resets the stream with
//! PROTOCOL_ERROR before any service runs; h2 has no setting to relax that. grpc-go, and so
//! containerd, accepts both, and nothing of ours reads the authority.
//!
//! [`Front`] sits between the accepted socket and the server, without a task or thread of its
//! own: the connection's bytes pass through it as the server reads and writes them (see
//! `unix::ServerConnection`). Client to server, every frame goes through unchanged except the
//! header blocks (HEADERS and its CONTINUATION frames), which are HPACK-decoded with the
//! client's dynamic table and re-encoded as literals without indexing, with an `:authority`
//! that is not a valid URI authority replaced by `localhost`. The server's decoder thus never
//! gets a dynamic table entry and stays trivially in step; the client's encoder keeps its table
//! with us. Header blocks are not flow-controlled, so windows are untouched. Server to client,
//! every byte goes through as it is; the front only reads the server's SETTINGS for the header
//! table size the client's encoder may use.
//!
//! A malformed frame sequence or header block is an error that closes the connection: the server
//! would have closed it too (a connection error in HTTP/2), and the front cannot go on decoding
//! after one. Frames and header lists are bounded before anything is buffered.

use std::cell::RefCell;
use std::fmt;

use loona_hpack::Decoder;
use loona_hpack::huffman::HuffmanDecoder;
use tonic::codegen::http::uri::Authority;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// The frame size every HTTP/2 peer accepts whatever it advertised (the floor of
/// SETTINGS_MAX_FRAME_SIZE): the re-encoded header blocks are cut to it.
const SAFE_FRAME: usize = 16_384;

/// The largest header block (HPACK-encoded, HEADERS and CONTINUATION frames together) the front
/// buffers. The server under tonic accepts header lists of 16 KiB by default (and gRPC clients
/// send at most 8 to 16 KiB of metadata by default); this leaves it to answer those somewhat
/// larger itself.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest header list (decoded: names, values and 32 bytes per field, as RFC 9113 counts
/// it) the front re-encodes. A small block that references a large table entry again and again
/// decodes to much more than it weighs: this bounds what it costs.
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// CONTINUATION frames in one header block.
const MAX_CONTINUATIONS: usize = 1024;
/// The HPACK dynamic table size before the server says otherwise (RFC 9113 §6.5.2).
const DEFAULT_TABLE: usize = 4096;
/// The largest dynamic table the front keeps for a client, whatever the server advertised.
const MAX_TABLE: usize = 64 * 1024;

/// The authority the server gets in place of one it would refuse.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Why a connection was closed: what the client sent that the front cannot pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

fn malformed<T>(msg: String) -> Result<T, Malformed> {
    Err(Malformed(msg))
}

/// Where the front is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Checking the connection preface; this many of its bytes seen so far.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge: everything goes through, the server answers it.
    Transparent,
    /// Reading a frame header into `head`.
    FrameHead,
    /// This many bytes of a frame payload still to pass through unchanged.
    Pass(usize),
    /// Buffering the payload of a HEADERS or CONTINUATION frame into `frame`.
    HeaderPayload {
        len: usize,
        kind: u8,
        flags: u8,
        stream: u32,
    },
}

/// A header block being reassembled from a HEADERS frame and its CONTINUATION frames.
struct Block {
    stream: u32,
    /// The HEADERS frame's flags.
    flags: u8,
    /// The HEADERS frame's priority fields (stream dependency and weight), passed on as they are.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    continuations: usize,
}

/// The client→server rewriting and server→client observation of one connection. Sans I/O: fed
/// bytes, it returns bytes, so it is tested on hand-built frames.
pub struct Front {
    state: State,
    head: [u8; FRAME_HEAD],
    head_len: usize,
    frame: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
    table_limit: usize,
    replaced: u64,
    server: ServerWatch,
}

/// Where the front is in the server's byte stream (frames only: a server sends no preface).
#[derive(Default)]
struct ServerWatch {
    head: [u8; FRAME_HEAD],
    head_len: usize,
    left: usize,
    settings: bool,
    entry: [u8; 6],
    entry_len: usize,
}

impl Default for Front {
    fn default() -> Self {
        Self::new()
    }
}

impl Front {
    pub fn new() -> Front {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_TABLE);
        Front {
            state: State::Preface(0),
            head: [0; FRAME_HEAD],
            head_len: 0,
            frame: Vec::new(),
            block: None,
            decoder,
            table_limit: DEFAULT_TABLE,
            replaced: 0,
            server: ServerWatch::default(),
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// When the next bytes from the client go through unchanged (a frame payload other than a
    /// header block, or a connection that is not HTTP/2): at most how many. The caller may then
    /// hand them to the server directly and report them with [`Front::passed`].
    pub fn passthrough(&self) -> Option<usize> {
        match self.state {
            State::Pass(left) => Some(left),
            State::Transparent => Some(usize::MAX),
            _ => None,
        }
    }

    /// `n` bytes (at most what [`Front::passthrough`] said) went to the server unchanged.
    pub fn passed(&mut self, n: usize) {
        if let State::Pass(left) = self.state {
            let left = left.saturating_sub(n);
            self.state = if left == 0 {
                State::FrameHead
            } else {
                State::Pass(left)
            };
        }
    }

    /// Takes bytes the client sent, all of them, and appends what the server is to read to `out`
    /// (possibly nothing yet: a header block is passed on once complete).
    pub fn from_client(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        while !input.is_empty() {
            match self.state {
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    if input[..n] != PREFACE[seen..seen + n] {
                        // What was seen of the preface went out already.
                        self.state = State::Transparent;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::FrameHead
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Transparent => {
                    out.extend_from_slice(input);
                    input = &[];
                }
                State::FrameHead => {
                    let n = (FRAME_HEAD - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEAD {
                        self.head_len = 0;
                        self.start_frame(out)?;
                    }
                }
                State::Pass(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.passed(n);
                }
                State::HeaderPayload {
                    len,
                    kind,
                    flags,
                    stream,
                } => {
                    let n = (len - self.frame.len()).min(input.len());
                    self.frame.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.frame.len() == len {
                        self.state = State::FrameHead;
                        self.header_frame(kind, flags, stream, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes bytes the server sent to the client (which go out unchanged) and reads its SETTINGS
    /// for the header table size the client's encoder may use from then on.
    pub fn from_server(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let w = &mut self.server;
            if w.left == 0 {
                let n = (FRAME_HEAD - w.head_len).min(bytes.len());
                w.head[w.head_len..w.head_len + n].copy_from_slice(&bytes[..n]);
                w.head_len += n;
                bytes = &bytes[n..];
                if w.head_len == FRAME_HEAD {
                    w.head_len = 0;
                    w.left = u32::from_be_bytes([0, w.head[0], w.head[1], w.head[2]]) as usize;
                    w.settings = w.head[3] == SETTINGS && w.head[4] & ACK == 0;
                    w.entry_len = 0;
                }
                continue;
            }
            let n = w.left.min(bytes.len());
            w.left -= n;
            if !w.settings {
                bytes = &bytes[n..];
                continue;
            }
            let mut table_size: Option<u32> = None;
            for &b in &bytes[..n] {
                w.entry[w.entry_len] = b;
                w.entry_len += 1;
                if w.entry_len == w.entry.len() {
                    w.entry_len = 0;
                    let id = u16::from_be_bytes([w.entry[0], w.entry[1]]);
                    let value =
                        u32::from_be_bytes([w.entry[2], w.entry[3], w.entry[4], w.entry[5]]);
                    if id == SETTINGS_HEADER_TABLE_SIZE {
                        table_size = Some(table_size.map_or(value, |s| s.max(value)));
                    }
                }
            }
            bytes = &bytes[n..];
            if let Some(size) = table_size {
                self.allow_table_size(size);
            }
        }
    }

    /// The server advertised SETTINGS_HEADER_TABLE_SIZE `size`: the client's encoder may grow
    /// its table to it. The front accepts the largest size advertised so far: until the client
    /// acknowledges a smaller one it may still use the larger (and the server never sees this
    /// table, so leniency here costs nothing but the memory, which [`MAX_TABLE`] bounds).
    fn allow_table_size(&mut self, size: u32) {
        let size = usize::try_from(size).unwrap_or(usize::MAX).min(MAX_TABLE);
        if size > self.table_limit {
            self.table_limit = size;
            self.decoder.set_max_allowed_table_size(size);
        }
    }

    /// A frame header is in `head`: decide what to do with the payload.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if let Some(block) = &self.block
            && (kind != CONTINUATION || stream != block.stream)
        {
            return malformed(format!(
                "a frame of type {kind:#x} on stream {stream} inside the header block of \
                 stream {} (only its CONTINUATION frames may come before it ends)",
                block.stream
            ));
        }
        match kind {
            HEADERS | CONTINUATION => {
                if kind == CONTINUATION && self.block.is_none() {
                    return malformed(format!(
                        "a CONTINUATION frame on stream {stream} with no header block open"
                    ));
                }
                // Padding and priority fields come on top of the fragment.
                if len > MAX_HEADER_BLOCK + 256 + 5 {
                    return malformed(format!(
                        "a {}-byte header frame on stream {stream}: header blocks are limited \
                         to {MAX_HEADER_BLOCK} bytes",
                        len
                    ));
                }
                self.frame.clear();
                self.state = State::HeaderPayload {
                    len,
                    kind,
                    flags,
                    stream,
                };
                if len == 0 {
                    self.state = State::FrameHead;
                    self.header_frame(kind, flags, stream, out)?;
                }
            }
            _ => {
                out.extend_from_slice(&h);
                self.state = if len == 0 {
                    State::FrameHead
                } else {
                    State::Pass(len)
                };
            }
        }
        Ok(())
    }

    /// A whole HEADERS or CONTINUATION frame payload is in `frame`.
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Malformed> {
        let payload = &self.frame[..];
        if kind == HEADERS {
            let mut start = 0;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let Some(&p) = payload.first() else {
                    return malformed(format!(
                        "a padded HEADERS frame on stream {stream} without a pad length"
                    ));
                };
                pad = usize::from(p);
                start = 1;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                if payload.len() < start + 5 {
                    return malformed(format!(
                        "a HEADERS frame on stream {stream} too short for its priority fields"
                    ));
                }
                let mut fields = [0u8; 5];
                fields.copy_from_slice(&payload[start..start + 5]);
                priority = Some(fields);
                start += 5;
            }
            if pad > payload.len() - start {
                return malformed(format!(
                    "a HEADERS frame on stream {stream} with {pad} bytes of padding in a \
                     {}-byte payload",
                    payload.len()
                ));
            }
            let end = payload.len() - pad;
            if end - start > MAX_HEADER_BLOCK {
                return malformed(format!(
                    "a header block on stream {stream} over {MAX_HEADER_BLOCK} bytes"
                ));
            }
            self.block = Some(Block {
                stream,
                flags,
                priority,
                fragment: payload[start..end].to_vec(),
                continuations: 0,
            });
        } else {
            let Some(block) = self.block.as_mut() else {
                return malformed(format!(
                    "a CONTINUATION frame on stream {stream} with no header block open"
                ));
            };
            block.continuations += 1;
            if block.continuations > MAX_CONTINUATIONS {
                return malformed(format!(
                    "more than {MAX_CONTINUATIONS} CONTINUATION frames in the header block of \
                     stream {stream}"
                ));
            }
            if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                return malformed(format!(
                    "a header block on stream {stream} over {MAX_HEADER_BLOCK} bytes"
                ));
            }
            block.fragment.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish(block, out)?;
        }
        Ok(())
    }

    /// Decodes a complete header block and appends it, re-encoded, to `out`.
    fn finish(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), Malformed> {
        let plain = without_huffman(&block.fragment).or_else(|e| {
            malformed(format!(
                "the header block of stream {} does not decode (HPACK: {e})",
                block.stream
            ))
        })?;
        let mut encoded = Vec::with_capacity(plain.len() + 64);
        let mut list_size = 0usize;
        let mut replaced = false;
        self.decoder
            .decode_with_cb(&plain, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_HEADER_LIST {
                    // Decoding goes on (to keep the table in step) but nothing more is kept.
                    return;
                }
                let value: &[u8] =
                    if &name[..] == b":authority" && Authority::try_from(&value[..]).is_err() {
                        replaced = true;
                        REPLACEMENT_AUTHORITY
                    } else {
                        &value
                    };
                encode_literal(&mut encoded, &name, value);
            })
            .or_else(|e| {
                malformed(format!(
                    "the header block of stream {} does not decode (HPACK: {e})",
                    block.stream
                ))
            })?;
        if list_size > MAX_HEADER_LIST {
            return malformed(format!(
                "the header list of stream {} is over {MAX_HEADER_LIST} bytes",
                block.stream
            ));
        }
        if replaced {
            self.replaced += 1;
        }
        write_header_block(out, &block, &encoded);
        Ok(())
    }
}

thread_local! {
    /// loona-hpack builds its Huffman tables anew for every string it decodes (some 20 µs);
    /// built once per thread here, a string costs what its bytes do.
    static HUFFMAN: RefCell<Option<HuffmanDecoder>> = const { RefCell::new(None) };
}

/// The same header block with its Huffman-coded strings decoded (RFC 7541 §6): what the
/// decoder then adds to its table and emits is the same, and it decodes no string itself.
fn without_huffman(block: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(block.len() + block.len() / 2);
    let mut i = 0;
    while i < block.len() {
        let first = block[i];
        // The representation's prefix size, and whether it may carry strings: indexed (1),
        // literal with incremental indexing (01), size update (001), literal without
        // indexing or never indexed (000x).
        let (prefix, literal) = match first {
            b if b & 0x80 != 0 => (7, false),
            b if b & 0x40 != 0 => (6, true),
            b if b & 0x20 != 0 => (5, false),
            _ => (4, true),
        };
        let (index, n) = decode_integer(&block[i..], prefix)?;
        out.extend_from_slice(&block[i..i + n]);
        i += n;
        if !literal {
            continue;
        }
        // A new name (index 0) and the value, or only the value.
        for _ in 0..if index == 0 { 2 } else { 1 } {
            let huffman = block.get(i).is_some_and(|b| b & 0x80 != 0);
            let (len, n) = decode_integer(&block[i..], 7)?;
            let start = i + n;
            let Some(s) = start.checked_add(len).and_then(|end| block.get(start..end)) else {
                return Err(format!("a {len}-byte string past the end of the block"));
            };
            i = start + len;
            if huffman {
                let plain = HUFFMAN.with(|h| {
                    h.borrow_mut()
                        .get_or_insert_with(HuffmanDecoder::new)
                        .decode(s)
                        .map_err(|e| format!("Huffman: {e}"))
                })?;
                encode_string(&mut out, &plain);
            } else {
                out.extend_from_slice(&block[start - n..i]);
            }
        }
    }
    Ok(out)
}

/// An integer with an N-bit prefix (RFC 7541 §5.1) at the start of `buf`: its value and how
/// many octets it took. Values past 2^28 are refused (nothing in a header block is that large).
fn decode_integer(buf: &[u8], prefix_bits: u32) -> Result<(usize, usize), String> {
    let Some(&first) = buf.first() else {
        return Err("the block ends inside a representation".into());
    };
    let max = (1usize << prefix_bits) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok((value, 1));
    }
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() <= 5 {
        Err("the block ends inside an integer".into())
    } else {
        Err("an integer of more than five octets".into())
    }
}

/// Appends a header block as a HEADERS frame and as many CONTINUATION frames as it takes for
/// none to be over [`SAFE_FRAME`]. Padding is dropped; END_STREAM and priority are kept.
fn write_header_block(out: &mut Vec<u8>, block: &Block, encoded: &[u8]) {
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| &p[..]);
    let (first, mut rest) = encoded.split_at(encoded.len().min(SAFE_FRAME - priority.len()));
    let mut flags = block.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_head(
        out,
        priority.len() + first.len(),
        HEADERS,
        flags,
        block.stream,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(SAFE_FRAME));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_head(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A literal header field without indexing, with a literal name (RFC 7541 §6.2.2): the server's
/// decoder adds nothing to its dynamic table.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

/// A string literal without Huffman coding (RFC 7541 §5.2).
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, 7, s.len());
    out.extend_from_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1), the other bits of the first octet zero.
fn encode_integer(out: &mut Vec<u8>, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: u8 = 0x0;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;
    const BAD: &str = "tmp%2Fgt%2Fc.sock";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_head(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// Splits what the server reads into the preface and frames.
    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        bytes = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            frames.push(Frame {
                kind: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
                payload: bytes[FRAME_HEAD..FRAME_HEAD + len].to_vec(),
            });
            bytes = &bytes[FRAME_HEAD + len..];
        }
        frames
    }

    /// Decodes a block with a decoder that has seen nothing before: the front's blocks never
    /// refer to a dynamic table.
    fn decode_fresh(block: &[u8]) -> Vec<(String, String)> {
        Decoder::new()
            .decode(block)
            .expect("the front's block decodes on its own")
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_string(&mut out, s);
        out
    }

    /// A request header block as grpc C-core sends it: static-table indexes, and the path and
    /// authority as literals added to the dynamic table.
    fn request_block(path: &str, authority: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x44); // :path, literal with incremental indexing, name index 4
        b.extend(string(path.as_bytes()));
        b.push(0x41); // :authority, literal with incremental indexing, name index 1
        b.extend(string(authority.as_bytes()));
        b.push(0x00); // te: trailers, literal without indexing, new name
        b.extend(string(b"te"));
        b.extend(string(b"trailers"));
        b.push(0x40 | 31); // content-type, literal with incremental indexing, name index 31
        b.extend(string(b"application/grpc"));
        b
    }

    fn run(front: &mut Front, input: &[u8]) -> Result<Vec<u8>, Malformed> {
        let mut out = Vec::new();
        front.from_client(input, &mut out)?;
        Ok(out)
    }

    fn connection(rest: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0])); // INITIAL_WINDOW_SIZE
        for f in rest {
            bytes.extend_from_slice(f);
        }
        bytes
    }

    #[test]
    fn percent_encoded_authority_becomes_localhost_and_the_rest_passes_unchanged() {
        let data = frame(DATA, END_STREAM, 1, b"\0\0\0\0\x05hello");
        let window = frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]);
        let headers = frame(
            HEADERS,
            END_HEADERS,
            1,
            &request_block("/containerd.services.version.v1.Version/Version", BAD),
        );
        let input = connection(&[headers, data.clone(), window.clone()]);
        let mut front = Front::new();
        let out = run(&mut front, &input).unwrap();

        let got = frames(&out);
        assert_eq!(got.len(), 4);
        assert_eq!(
            out[PREFACE.len()..PREFACE.len() + 15],
            input[PREFACE.len()..][..15]
        );
        assert_eq!(
            (got[1].kind, got[1].flags, got[1].stream),
            (HEADERS, END_HEADERS, 1)
        );
        assert_eq!(
            decode_fresh(&got[1].payload),
            pairs(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/containerd.services.version.v1.Version/Version"),
                (":authority", "localhost"),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
            ])
        );
        // The DATA and WINDOW_UPDATE frames come after it byte for byte.
        assert!(out.ends_with(&[data, window].concat()));
        assert_eq!(front.replaced(), 1);
    }

    #[test]
    fn dynamic_table_references_resolve_and_valid_authorities_stay() {
        let mut front = Front::new();
        let first = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &request_block("/a/B", BAD),
        );
        // The second request refers to the first's entries: 62 is the content type added last,
        // 63 the authority, 64 the path.
        let second = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xc0, 0xbf, 0xbe]);
        // grpc-java's raw path, then valid ones (RFC 7541 C.4.1: Huffman-coded
        // www.example.com), which are left alone.
        let java = frame(
            HEADERS,
            END_HEADERS,
            5,
            &request_block("/a/C", "/tmp/gt/c.sock"),
        );
        let rfc = frame(
            HEADERS,
            END_HEADERS,
            7,
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
        );
        let port = frame(
            HEADERS,
            END_HEADERS,
            9,
            &request_block("/a/D", "localhost:8080"),
        );
        let out = run(&mut front, &connection(&[first, second, java, rfc, port])).unwrap();
        let got = frames(&out);
        let authority = |f: &Frame| {
            decode_fresh(&f.payload)
                .into_iter()
                .find(|(n, _)| n == ":authority")
                .map(|(_, v)| v)
        };
        assert_eq!(got[1].flags, END_HEADERS | END_STREAM);
        assert_eq!(authority(&got[1]).as_deref(), Some("localhost"));
        assert_eq!(
            decode_fresh(&got[2].payload),
            pairs(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/a/B"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
            ])
        );
        assert_eq!(authority(&got[3]).as_deref(), Some("localhost"));
        assert_eq!(authority(&got[4]).as_deref(), Some("www.example.com"));
        assert_eq!(authority(&got[5]).as_deref(), Some("localhost:8080"));
        assert_eq!(
            got.iter().skip(1).map(|f| f.stream).collect::<Vec<_>>(),
            [1, 3, 5, 7, 9]
        );
        assert_eq!(front.replaced(), 3);
    }

    /// RFC 7541 C.4: three requests with Huffman-coded strings, a literal name among them,
    /// each referring to entries the ones before added.
    #[test]
    fn huffman_coded_requests_of_rfc_7541_decode_as_the_rfc_says() {
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let frames_in: Vec<Vec<u8>> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, b))
            .collect();
        let got = frames(&run(&mut Front::new(), &connection(&frames_in)).unwrap());
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(decode_fresh(&got[1].payload), pairs(&base));
        let mut second = base.to_vec();
        second.push(("cache-control", "no-cache"));
        assert_eq!(decode_fresh(&got[2].payload), pairs(&second));
        assert_eq!(
            decode_fresh(&got[3].payload),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
    }

    #[test]
    fn bytes_fed_one_at_a_time_come_out_the_same() {
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &request_block("/a/B", BAD)),
            frame(DATA, 0, 1, &[7; 100]),
            frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xc0, 0xbf, 0xbe]),
            frame(PING, 0, 0, &[1; 8]),
        ]);
        let whole = run(&mut Front::new(), &input).unwrap();
        let mut front = Front::new();
        let mut bytewise = Vec::new();
        for b in &input {
            front
                .from_client(std::slice::from_ref(b), &mut bytewise)
                .unwrap();
        }
        assert_eq!(bytewise, whole);
    }

    #[test]
    fn padding_is_dropped_priority_kept_and_continuations_joined() {
        let block = request_block("/a/B", BAD);
        let (a, b) = block.split_at(10);
        let mut payload = vec![3]; // pad length
        payload.extend([0x80, 0, 0, 0, 41]); // exclusive dependency on stream 0, weight 42
        payload.extend_from_slice(a);
        payload.extend([0, 0, 0]);
        let input = connection(&[
            frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload),
            frame(CONTINUATION, END_HEADERS, 1, b),
        ]);
        let got = frames(&run(&mut Front::new(), &input).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].kind, HEADERS);
        assert_eq!(got[1].flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(got[1].payload[..5], [0x80, 0, 0, 0, 41]);
        let fields = decode_fresh(&got[1].payload[5..]);
        assert_eq!(fields[3], (":authority".into(), "localhost".into()));
        assert_eq!(fields.len(), 6);
    }

    #[test]
    fn a_large_block_goes_out_in_frames_the_server_accepts() {
        let value = "v".repeat(40_000);
        let mut block = request_block("/a/B", BAD);
        block.push(0x00);
        block.extend(string(b"x-big"));
        block.extend(string(value.as_bytes()));
        let input = connection(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)]);
        let got = frames(&run(&mut Front::new(), &input).unwrap());
        let header_frames = &got[1..];
        assert_eq!(header_frames.len(), 3, "40 kB in 16 kB frames");
        assert_eq!(header_frames[0].kind, HEADERS);
        assert_eq!(header_frames[0].flags, END_STREAM);
        assert_eq!(header_frames[1].kind, CONTINUATION);
        assert_eq!(header_frames[1].flags, 0);
        assert_eq!(header_frames[2].flags, END_HEADERS);
        assert!(
            header_frames
                .iter()
                .all(|f| f.payload.len() <= SAFE_FRAME && f.stream == 1)
        );
        let joined: Vec<u8> = header_frames
            .iter()
            .flat_map(|f| f.payload.clone())
            .collect();
        let fields = decode_fresh(&joined);
        assert_eq!(fields[3].1, "localhost");
        assert_eq!(fields[6], ("x-big".to_string(), value));
    }

    #[test]
    fn the_table_may_grow_only_as_far_as_the_server_allowed() {
        // A dynamic table size update to 8192, then :method POST.
        let grow = frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x83]);
        let err = run(&mut Front::new(), &connection(std::slice::from_ref(&grow))).unwrap_err();
        assert!(err.to_string().contains("HPACK"), "{err}");

        let mut front = Front::new();
        // The server's SETTINGS (HEADER_TABLE_SIZE 8192, MAX_FRAME_SIZE), seen a byte at a time,
        // and a SETTINGS ack that carries nothing.
        let server = [
            frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x20, 0, 0, 5, 0, 0, 0x40, 0]),
            frame(SETTINGS, ACK, 0, &[]),
        ]
        .concat();
        for b in &server {
            front.from_server(std::slice::from_ref(b));
        }
        let got = frames(&run(&mut front, &connection(&[grow])).unwrap());
        assert_eq!(decode_fresh(&got[1].payload), pairs(&[(":method", "POST")]));
    }

    fn rejected(rest: &[Vec<u8>]) -> String {
        run(&mut Front::new(), &connection(rest))
            .expect_err("the front refuses it")
            .to_string()
    }

    #[test]
    fn malformed_framing_closes_the_connection_with_a_reason() {
        let block = request_block("/a/B", BAD);
        let msg = rejected(&[frame(CONTINUATION, END_HEADERS, 1, &block)]);
        assert!(msg.contains("no header block open"), "{msg}");

        let msg = rejected(&[
            frame(HEADERS, 0, 1, &block[..4]),
            frame(PING, 0, 0, &[0; 8]),
        ]);
        assert!(msg.contains("inside the header block of stream 1"), "{msg}");

        let msg = rejected(&[
            frame(HEADERS, 0, 1, &block[..4]),
            frame(CONTINUATION, END_HEADERS, 3, &block[4..]),
        ]);
        assert!(
            msg.contains("on stream 3 inside the header block of stream 1"),
            "{msg}"
        );

        let msg = rejected(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x83])]);
        assert!(msg.contains("200 bytes of padding"), "{msg}");

        let msg = rejected(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[])]);
        assert!(msg.contains("without a pad length"), "{msg}");

        let msg = rejected(&[frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0])]);
        assert!(msg.contains("priority"), "{msg}");
    }

    #[test]
    fn malformed_hpack_closes_the_connection_with_a_reason() {
        for (what, block) in [
            ("index 0", vec![0x80]),
            ("an index past both tables", vec![0xff, 0x00]),
            (
                "a string longer than the block",
                vec![0x00, 0x7f, 0xff, 0x7f],
            ),
            (
                "an integer of too many octets",
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
            ("bad Huffman padding", vec![0x00, 0x81, 0x00, 0x81, 0x00]),
            ("a size update at the end", vec![0x83, 0x20]),
        ] {
            let msg = rejected(&[frame(HEADERS, END_HEADERS, 1, &block)]);
            assert!(msg.contains("does not decode (HPACK"), "{what}: {msg}");
        }
    }

    #[test]
    fn hostile_sizes_are_refused_before_they_cost_memory() {
        // A frame header claiming 16 MiB: refused on its nine bytes, nothing buffered.
        let mut front = Front::new();
        let mut input = connection(&[]);
        frame_head(&mut input, 0xff_ffff, HEADERS, END_HEADERS, 1);
        let err = run(&mut front, &input).unwrap_err().to_string();
        assert!(err.contains("16777215-byte header frame"), "{err}");
        assert_eq!(front.frame.capacity(), 0);

        // A 4 kB entry added to the table, then referred to 100 times: 400 kB decoded.
        let mut bomb = vec![0x40];
        bomb.extend(string(b"x"));
        bomb.extend(string(&[b'a'; 4000]));
        bomb.extend([0xbe; 100]);
        let msg = rejected(&[frame(HEADERS, END_HEADERS, 1, &bomb)]);
        assert!(
            msg.contains(&format!("over {MAX_HEADER_LIST} bytes")),
            "{msg}"
        );

        // Header blocks spread over many frames.
        let mut flood = vec![frame(HEADERS, 0, 1, &[0x83])];
        flood.extend((0..=MAX_CONTINUATIONS).map(|_| frame(CONTINUATION, 0, 1, &[])));
        let msg = rejected(&flood);
        assert!(msg.contains("CONTINUATION frames"), "{msg}");

        let chunk = vec![0u8; 16_384];
        let mut big = vec![frame(HEADERS, 0, 1, &chunk)];
        big.extend((0..MAX_HEADER_BLOCK / chunk.len()).map(|_| frame(CONTINUATION, 0, 1, &chunk)));
        let msg = rejected(&big);
        assert!(
            msg.contains(&format!("over {MAX_HEADER_BLOCK} bytes")),
            "{msg}"
        );
    }

    #[test]
    fn what_is_not_http2_goes_through_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut front = Front::new();
        let mut out = run(&mut front, &input[..3]).unwrap();
        out.extend(run(&mut front, &input[3..]).unwrap());
        assert_eq!(out, input);
        assert_eq!(front.passthrough(), Some(usize::MAX));
    }

    #[test]
    fn a_payload_that_passes_through_may_bypass_the_front() {
        let mut front = Front::new();
        let mut input = connection(&[]);
        frame_head(&mut input, 1000, DATA, 0, 1);
        let out = run(&mut front, &input).unwrap();
        assert_eq!(out, input);
        assert_eq!(front.passthrough(), Some(1000));
        front.passed(600);
        assert_eq!(front.passthrough(), Some(400));
        front.passed(400);
        assert_eq!(front.passthrough(), None);
        // The next frame is parsed again.
        let headers = frame(HEADERS, END_HEADERS, 3, &request_block("/a/B", BAD));
        let got = run(&mut front, &headers).unwrap();
        assert_eq!(got[3], HEADERS);
        assert_eq!(front.replaced(), 1);
    }

    /// Random frames after the preface: an error or a result, never a panic, and no output
    /// beyond what the limits allow.
    #[test]
    fn random_frames_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut front = Front::new();
            let mut out = Vec::new();
            let mut input = PREFACE.to_vec();
            for _ in 0..(next() % 6) {
                let kind = [HEADERS, CONTINUATION, DATA, PING, SETTINGS][(next() % 5) as usize];
                let flags = (next() & 0xff) as u8;
                let payload: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
                input.extend(frame(kind, flags, (next() % 4) as u32, &payload));
            }
            let split = (next() as usize) % input.len();
            let result = front
                .from_client(&input[..split], &mut out)
                .and_then(|()| front.from_client(&input[split..], &mut out));
            if result.is_ok() {
                assert!(out.len() <= input.len() + 6 * (MAX_HEADER_LIST + 64));
            }
        }
    }
}
