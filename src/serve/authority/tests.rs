use super::*;

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;
const WINDOW_UPDATE: u8 = 0x8;

/// What the server would read: the frames after the preface, header blocks joined and
/// decoded with a fresh decoder (a mended block must not need the client's table).
#[derive(Debug, PartialEq)]
enum Seen {
    Frame(u8, u8, u32, Vec<u8>),
    Block {
        stream: u32,
        end_stream: bool,
        priority: Option<[u8; 5]>,
        fields: Vec<(String, String)>,
    },
}

/// A header block being gathered by [`seen_by_server`].
struct Open {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    bytes: Vec<u8>,
}

fn seen_by_server(out: &[u8]) -> Vec<Seen> {
    assert!(out.starts_with(PREFACE), "no preface in {out:?}");
    let mut rest = &out[PREFACE.len()..];
    let mut seen = Vec::new();
    let mut block: Option<Open> = None;
    while !rest.is_empty() {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        assert!(len <= FRAME_PAYLOAD_BYTES_MAX, "a frame of {len} bytes");
        match kind {
            TYPE_HEADERS => {
                assert!(block.is_none());
                assert_eq!(flags & FLAG_PADDED, 0, "padding is dropped");
                let (priority, fragment) = if flags & FLAG_PRIORITY != 0 {
                    (Some(payload[..5].try_into().unwrap()), &payload[5..])
                } else {
                    (None, payload)
                };
                block = Some(Open {
                    stream,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    bytes: fragment.to_vec(),
                });
            }
            TYPE_CONTINUATION => block
                .as_mut()
                .expect("a block")
                .bytes
                .extend_from_slice(payload),
            _ => seen.push(Seen::Frame(kind, flags, stream, payload.to_vec())),
        }
        if (kind == TYPE_HEADERS || kind == TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
            let Open {
                stream,
                end_stream,
                priority,
                bytes,
            } = block.take().unwrap();
            let fields = loona_hpack::Decoder::new()
                .decode(&bytes)
                .expect("decodable without the client's table")
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            seen.push(Seen::Block {
                stream,
                end_stream,
                priority,
                fields,
            });
        }
    }
    assert!(block.is_none(), "an unfinished block");
    seen
}

fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.26.0"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn fields(authority: &str, path: &str) -> Vec<(String, String)> {
    request(authority, path)
        .into_iter()
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

/// Two header blocks as an HTTP/2 client's encoder writes them (RFC 7541): the first adds
/// `:path`, `:authority`, `content-type`, `user-agent` and `te` to the dynamic table, the
/// second adds its own `:path` and refers to the other four by their table index.
fn grpc_blocks(authority: &str) -> (Vec<u8>, Vec<u8>) {
    let req = request(authority, "/etcdserverpb.Maintenance/Status");
    let mut first = vec![0x83, 0x86]; // :method POST, :scheme http (static 3 and 6)
    first.push(0x44); // :path (static name 4), incremental indexing
    put_string(&mut first, &req[2].1);
    first.push(0x41); // :authority (static name 1), incremental indexing
    put_string(&mut first, &req[3].1);
    first.push(0x5f); // content-type (static name 31), incremental indexing
    put_string(&mut first, &req[4].1);
    for (name, value) in &req[5..] {
        first.push(0x40); // a new name, incremental indexing
        put_string(&mut first, name);
        put_string(&mut first, value);
    }
    let mut second = vec![0x83, 0x86, 0x44];
    put_string(&mut second, b"/etcdserverpb.KV/Range");
    // Newest first from 62: :path 62, te 63, user-agent 64, content-type 65, :authority 66.
    second.extend([0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63]);
    (first, second)
}

/// A client's connection: preface, settings, then two requests on streams 1 and 3 (the
/// second's block refers to the table the first filled), each followed by a DATA frame; the
/// first block split over HEADERS and CONTINUATION.
fn client_bytes(authority: &str) -> Vec<u8> {
    let (first, second) = grpc_blocks(authority);
    let mut b = PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
    b.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
    let (a, c) = first.split_at(first.len() / 2);
    b.extend(frame(TYPE_HEADERS, 0, 1, a));
    b.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
    b.extend(frame(DATA, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
    b.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &second));
    b.extend(frame(DATA, FLAG_END_STREAM, 3, &[7; 300]));
    b
}

/// Runs `input` through a filter in pieces of `piece` bytes (0: all at once), then ends it.
fn through(input: &[u8], piece: usize) -> (Vec<u8>, Mode) {
    let mut f = Filter::default();
    let piece = if piece == 0 {
        input.len().max(1)
    } else {
        piece
    };
    for chunk in input.chunks(piece) {
        f.feed(chunk).expect("feed");
    }
    f.end().expect("end");
    (f.out[f.out_at..].to_vec(), f.mode)
}

#[test]
fn http1_passes_through_from_the_first_byte() {
    let req = b"PUT /key/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nb";
    for piece in [0, 1, 3] {
        assert_eq!(through(req, piece), (req.to_vec(), Mode::Pass));
    }
    // Starts like the preface, then is not it.
    let almost = b"PRI * HTTP/1.1\r\n\r\n";
    assert_eq!(through(almost, 1), (almost.to_vec(), Mode::Pass));
}

#[test]
fn a_plain_authority_leaves_the_connection_untouched() {
    let input = client_bytes("127.0.0.1:2379");
    for piece in [0, 1, 2, 7, 100] {
        assert_eq!(
            through(&input, piece),
            (input.clone(), Mode::Pass),
            "piece {piece}"
        );
    }
}

#[test]
fn a_url_authority_is_cut_to_host_and_port_in_every_block() {
    let input = client_bytes("http://127.0.0.1:2379");
    let (out, mode) = through(&input, 0);
    assert_eq!(mode, Mode::Mend);
    let expected = vec![
        Seen::Frame(SETTINGS, 0, 0, vec![0, 4, 0, 0, 0xff, 0xff]),
        Seen::Frame(WINDOW_UPDATE, 0, 0, vec![0, 0, 0x10, 0]),
        Seen::Block {
            stream: 1,
            end_stream: false,
            priority: None,
            fields: fields("127.0.0.1:2379", "/etcdserverpb.Maintenance/Status"),
        },
        Seen::Frame(DATA, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()),
        Seen::Block {
            stream: 3,
            end_stream: false,
            priority: None,
            fields: fields("127.0.0.1:2379", "/etcdserverpb.KV/Range"),
        },
        Seen::Frame(DATA, FLAG_END_STREAM, 3, vec![7; 300]),
    ];
    assert_eq!(seen_by_server(&out), expected);
    // Byte by byte and in odd pieces: the same bytes.
    for piece in [1, 2, 5, 13] {
        assert_eq!(
            through(&input, piece),
            (out.clone(), Mode::Mend),
            "piece {piece}"
        );
    }
    // https and a trailing path too.
    let (out, _) = through(&client_bytes("https://localhost:4001/x"), 0);
    let Seen::Block { fields: f, .. } = &seen_by_server(&out)[2] else {
        panic!("no block");
    };
    assert_eq!(f[3], (":authority".into(), "localhost:4001".into()));
}

#[test]
fn a_huffman_coded_block_is_decoded() {
    // RFC 7541 C.4.1: GET http://www.example.com/, the authority Huffman-coded and indexed.
    let block = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        1,
        &block,
    ));
    assert_eq!(through(&input, 0), (input.clone(), Mode::Pass));
}

#[test]
fn priority_is_kept_padding_dropped_end_stream_kept() {
    let mut enc = loona_hpack::Encoder::new();
    let block = enc.encode(
        request("http://h:1", "/p")
            .iter()
            .map(|(n, v)| (&n[..], &v[..])),
    );
    let mut payload = vec![3]; // pad length
    payload.extend([0x80, 0, 0, 1, 16]); // exclusive dependency on stream 1, weight 16
    payload.extend(&block);
    payload.extend([0; 3]);
    let mut input = PREFACE.to_vec();
    let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS | FLAG_END_STREAM;
    input.extend(frame(TYPE_HEADERS, flags, 5, &payload));
    let (out, mode) = through(&input, 0);
    assert_eq!(mode, Mode::Mend);
    assert_eq!(
        seen_by_server(&out),
        vec![Seen::Block {
            stream: 5,
            end_stream: true,
            priority: Some([0x80, 0, 0, 1, 16]),
            fields: fields("h:1", "/p"),
        }]
    );
}

#[test]
fn a_block_larger_than_a_frame_is_written_in_continuations() {
    let mut req = request("http://h:1", "/p");
    req.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let block: Vec<u8> = {
        // Literal without indexing, so the test's block is just as large.
        let mut b = Vec::new();
        for (n, v) in &req {
            b.push(0);
            put_string(&mut b, n);
            put_string(&mut b, v);
        }
        b
    };
    let mut input = PREFACE.to_vec();
    for (i, part) in block.chunks(16_000).enumerate() {
        let last = (i + 1) * 16_000 >= block.len();
        let kind = if i == 0 {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        input.extend(frame(
            kind,
            if last { FLAG_END_HEADERS } else { 0 },
            1,
            part,
        ));
    }
    let (out, mode) = through(&input, 1000);
    assert_eq!(mode, Mode::Mend);
    let seen = seen_by_server(&out);
    let Seen::Block { fields: f, .. } = &seen[0] else {
        panic!("no block");
    };
    assert_eq!(f[3].1, "h:1");
    assert_eq!(f[7].1.len(), 40_000);
}

#[test]
fn what_it_cannot_follow_goes_on_unchanged_before_mending() {
    // A block over the bound, a frame inside a block, an undecodable block, a CONTINUATION
    // out of place: each handed on as it came.
    let big = frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &vec![0; HEADER_BLOCK_BYTES_MAX + 1],
    );
    let inside = [frame(TYPE_HEADERS, 0, 1, &[0x82]), frame(DATA, 0, 1, b"x")].concat();
    let undecodable = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]);
    let stray = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]);
    // Empty CONTINUATIONs without end: held only up to the bound on held frames.
    let mut flood = frame(TYPE_HEADERS, 0, 1, &[0x82]);
    for _ in 0..HEADER_FRAMES_BYTES_MAX / FRAME_HEADER_BYTES {
        flood.extend(frame(TYPE_CONTINUATION, 0, 1, &[]));
    }
    let mut f = Filter::default();
    f.feed(&[PREFACE.to_vec(), flood.clone()].concat()).unwrap();
    assert_eq!(f.mode, Mode::Pass);
    assert!(f.raw.is_empty() && f.input.is_empty());
    for case in [big, inside, undecodable, stray, flood] {
        let input = [PREFACE.to_vec(), case, frame(DATA, 0, 1, b"after")].concat();
        for piece in [0, 1, 4096] {
            assert_eq!(through(&input, piece), (input.clone(), Mode::Pass));
        }
    }
}

/// A block that puts a 4,000-byte field in the table, then one naming it 1,000 times: 4 MB
/// of header list from 4 KB of block.
fn table_bomb() -> Vec<u8> {
    let mut put = vec![0x40];
    put_string(&mut put, b"x-big");
    put_string(&mut put, &[b'v'; 4000]);
    let mut b = frame(TYPE_HEADERS, FLAG_END_HEADERS, 7, &put);
    b.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 9, &[0x80 | 62; 1000]));
    b
}

#[test]
fn a_block_that_decodes_past_the_list_limit_is_not_followed() {
    // A first block with a URL authority that would be mended, but decodes past the limit:
    // handed on as it came, for h2 to refuse.
    let mut block = vec![0x41]; // :authority, incremental indexing
    put_string(&mut block, b"http://h:1");
    block.push(0x40);
    put_string(&mut block, b"x-big");
    put_string(&mut block, &[b'v'; 4000]);
    block.extend([0x80 | 62; 1000]);
    let input = [
        PREFACE.to_vec(),
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block),
    ]
    .concat();
    assert_eq!(through(&input, 0), (input.clone(), Mode::Pass));
    let mut block = vec![0x41];
    put_string(&mut block, b"http://h:1");
    let input = [
        PREFACE.to_vec(),
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block),
    ]
    .concat();
    assert_eq!(
        through(&input, 0).1,
        Mode::Mend,
        "the same block without the bomb"
    );
    // On a mended connection it ends the connection, holding no more than the limit.
    let mut f = Filter::default();
    f.feed(&client_bytes("http://h:1")).unwrap();
    let err = f.feed(&table_bomb()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("header list too large"), "{err}");
}

#[test]
fn what_it_cannot_follow_ends_a_mended_connection() {
    let input = client_bytes("http://h:1");
    let mut f = Filter::default();
    f.feed(&input).unwrap();
    assert_eq!(f.mode, Mode::Mend);
    let err = f
        .feed(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            5,
            &[0xff, 0xff, 0xff],
        ))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A mended connection that ends inside a header frame (a DATA frame's bytes went on as
    // they came, so ending inside one is the server's to see).
    let mut f = Filter::default();
    f.feed(&input).unwrap();
    f.feed(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &[0x82, 0x86])[..10])
        .unwrap();
    assert!(f.end().is_err());
    let mut f = Filter::default();
    f.feed(&input[..input.len() - 10]).unwrap();
    assert!(f.end().is_ok());
}

#[test]
fn no_input_makes_it_panic() {
    // xorshift: deterministic bytes, many shapes of frame and block.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000 {
        let mut input = PREFACE.to_vec();
        if round % 2 == 0 {
            // A well-formed URL request first, so the rest is read in mending mode.
            input = client_bytes("http://h:1");
        }
        let len = (next() % 64) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 && !payload.is_empty() {
            payload[0] = [0x00, 0x10, 0x40, 0x20, 0x3f][(next() % 5) as usize];
        }
        let kind = [TYPE_HEADERS, TYPE_CONTINUATION, DATA, 0xa][(next() % 4) as usize];
        let flags = next() as u8;
        input.extend(frame(kind, flags, (next() % 8) as u32, &payload));
        if round % 5 == 0 {
            input.extend((0..(next() % 20)).map(|_| next() as u8));
        }
        let mut f = Filter::default();
        let piece = 1 + (next() % 40) as usize;
        for chunk in input.chunks(piece) {
            if f.feed(chunk).is_err() {
                break;
            }
        }
        let _ = f.end();
    }
}

#[tokio::test]
async fn reads_through_mended_give_the_mended_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let input = client_bytes("http://127.0.0.1:2379");
    let (expected, _) = through(&input, 0);
    let (mut client, server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for piece in input.chunks(7) {
            client.write_all(piece).await.unwrap();
        }
        client.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    Mended::new(server).read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got, expected);

    // An HTTP/1.1 connection reads as it came.
    let (mut client, server) = tokio::io::duplex(64);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(client);
    let mut got = Vec::new();
    Mended::new(server).read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
}
