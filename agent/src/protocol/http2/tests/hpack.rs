//! HPACK decoder against every example of RFC 7541 Appendix C, Huffman round trips, errors,
//! and the "unknown older entries" model.

use super::super::hpack::{Block, Decoder, HpackError};
use super::super::huffman::{self, CODES, HuffmanError};
use super::{hdr, idx, inc, inc_named, lit, lit_named};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode(d: &mut Decoder, bytes: &[u8]) -> Result<Block, HpackError> {
    let mut out = Block::default();
    d.decode(bytes, &mut out).map(|()| out)
}

fn fields(b: &Block) -> Vec<(String, String)> {
    b.fields
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn table(d: &Decoder) -> Vec<(String, String)> {
    d.entries()
        .map(|e| {
            let (n, v) = e.expect("no holes");
            (
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
}

/// Decodes `bytes`, checks the fields, the table (newest first) and its size.
fn step(
    d: &mut Decoder,
    bytes: &str,
    want: &[(&str, &str)],
    want_table: &[(&str, &str)],
    size: usize,
) {
    let b = decode(d, &hex(bytes)).unwrap();
    assert_eq!(fields(&b), pairs(want));
    assert_eq!(b.undecoded, 0);
    assert_eq!(table(d), pairs(want_table));
    assert_eq!(d.table_size(), size);
    assert!(!d.is_lossy());
}

// ---- C.1 integers ----

#[test]
fn c1_integers() {
    // C.1.1: 10 with a 5-bit prefix, C.1.2: 1337 with a 5-bit prefix, C.1.3: 42 at a byte
    // boundary. Checked through the size update (5-bit prefix) and an indexed field (7-bit).
    let mut d = Decoder::new();
    d.set_limit(2000);
    decode(&mut d, &[0x20 | 0x0a]).unwrap();
    decode(&mut d, &[0x20 | 0x1f, 0x9a, 0x0a]).unwrap();
    // 1337 accepted as a size: a table of 1337 bytes takes 1337 - 32 bytes of entry.
    let big = "x".repeat(1337 - 32 - 1);
    decode(&mut d, &inc("a", &big)).unwrap();
    assert_eq!(d.table_size(), 1337);
    decode(&mut d, &inc("a", &(big.clone() + "y"))).unwrap();
    assert_eq!(
        d.table_size(),
        0,
        "an entry larger than 1337 empties the table"
    );
    // 42 with an 8-bit prefix is the string length encoding: 7-bit prefix, 42 < 127.
    let mut v = vec![0x00, 0x01, b'n', 42];
    v.extend([b'v'; 42]);
    let b = decode(&mut d, &v).unwrap();
    assert_eq!(b.fields[0].value.len(), 42);
    // The integer encoder used by the frame tests agrees with C.1.2.
    let mut enc = Vec::new();
    super::int(&mut enc, 0, 5, 1337);
    assert_eq!(enc, [0x1f, 0x9a, 0x0a]);
}

// ---- C.2 individual fields ----

#[test]
fn c2_1_literal_with_indexing() {
    let mut d = Decoder::new();
    step(
        &mut d,
        "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        &[("custom-key", "custom-header")],
        &[("custom-key", "custom-header")],
        55,
    );
}

#[test]
fn c2_2_literal_without_indexing() {
    let mut d = Decoder::new();
    step(
        &mut d,
        "040c 2f73 616d 706c 652f 7061 7468",
        &[(":path", "/sample/path")],
        &[],
        0,
    );
}

#[test]
fn c2_3_never_indexed() {
    let mut d = Decoder::new();
    step(
        &mut d,
        "1008 7061 7373 776f 7264 0673 6563 7265 74",
        &[("password", "secret")],
        &[],
        0,
    );
}

#[test]
fn c2_4_indexed() {
    let mut d = Decoder::new();
    step(&mut d, "82", &[(":method", "GET")], &[], 0);
}

// ---- C.3 / C.4 requests ----

const REQ1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQ2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const T1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const T2: &[(&str, &str)] = &[
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];
const T3: &[(&str, &str)] = &[
    ("custom-key", "custom-value"),
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];

#[test]
fn c3_requests_without_huffman() {
    let mut d = Decoder::new();
    step(
        &mut d,
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        REQ1,
        T1,
        57,
    );
    step(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865", REQ2, T2, 110);
    step(
        &mut d,
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        REQ3,
        T3,
        164,
    );
}

#[test]
fn c4_requests_with_huffman() {
    let mut d = Decoder::new();
    step(
        &mut d,
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        REQ1,
        T1,
        57,
    );
    step(&mut d, "8286 84be 5886 a8eb 1064 9cbf", REQ2, T2, 110);
    step(
        &mut d,
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        REQ3,
        T3,
        164,
    );
}

// ---- C.5 / C.6 responses, table size 256 ----

const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOC: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

fn responses(blocks: [&str; 3]) {
    let mut d = Decoder::new();
    d.set_limit(256);
    // The examples assume a table of 256 bytes: the encoder says so with a size update.
    decode(&mut d, &[0x3f, 0xe1, 0x01]).unwrap();
    step(
        &mut d,
        blocks[0],
        &[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOC),
        ],
        &[
            ("location", LOC),
            ("date", DATE1),
            ("cache-control", "private"),
            (":status", "302"),
        ],
        222,
    );
    step(
        &mut d,
        blocks[1],
        &[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOC),
        ],
        &[
            (":status", "307"),
            ("location", LOC),
            ("date", DATE1),
            ("cache-control", "private"),
        ],
        222,
    );
    step(
        &mut d,
        blocks[2],
        &[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", DATE2),
            ("location", LOC),
            ("content-encoding", "gzip"),
            ("set-cookie", COOKIE),
        ],
        &[
            ("set-cookie", COOKIE),
            ("content-encoding", "gzip"),
            ("date", DATE2),
        ],
        215,
    );
}

#[test]
fn c5_responses_without_huffman() {
    responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

// ---- Huffman ----

#[test]
fn huffman_code_is_canonical_and_complete() {
    // Kraft equality: sum of 2^-len over all 257 codes is exactly 1 (scaled by 2^30).
    let total: u64 = CODES.iter().map(|&(_, l)| 1u64 << (30 - l)).sum();
    assert_eq!(total, 1 << 30);
    // Canonical: sorted by (length, symbol), each code is the previous + 1, shifted.
    let mut order: Vec<usize> = (0..CODES.len()).collect();
    order.sort_by_key(|&s| (CODES[s].1, s));
    for w in order.windows(2) {
        let (a, la) = CODES[w[0]];
        let (b, lb) = CODES[w[1]];
        assert_eq!(b, (a + 1) << (lb - la), "symbols {} {}", w[0], w[1]);
    }
}

#[test]
fn huffman_round_trip_all_bytes() {
    let all: Vec<u8> = (0..=255).collect();
    for chunk in [&all[..], b"", b"a", b"www.example.com", b"\xff\x00\xfe"] {
        let enc = huffman::encode(chunk);
        let mut out = Vec::new();
        huffman::decode(&enc, &mut out).unwrap();
        assert_eq!(out, chunk);
    }
    for b in 0..=255u8 {
        for n in 1..4 {
            let s = vec![b; n];
            let mut out = Vec::new();
            huffman::decode(&huffman::encode(&s), &mut out).unwrap();
            assert_eq!(out, s);
        }
    }
}

#[test]
fn huffman_rejects_eos_and_bad_padding() {
    // EOS (30 ones) followed by padding.
    let mut out = Vec::new();
    assert_eq!(
        huffman::decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
        Err(HuffmanError::Eos)
    );
    // 'a' (00011) + padding of zeros instead of ones.
    assert_eq!(
        huffman::decode(&[0x18], &mut out),
        Err(HuffmanError::BadPadding)
    );
    // 'a' + a full byte of ones: padding longer than 7 bits.
    assert_eq!(
        huffman::decode(&[0x1f, 0xff], &mut out),
        Err(HuffmanError::BadPadding)
    );
    // Valid: 'a' + 3 one bits.
    out.clear();
    huffman::decode(&[0x1f], &mut out).unwrap();
    assert_eq!(out, b"a");
}

#[test]
fn huffman_matches_rfc_example_strings() {
    assert_eq!(
        huffman::encode(b"www.example.com"),
        hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
    );
    assert_eq!(huffman::encode(b"no-cache"), hex("a8eb 1064 9cbf"));
    assert_eq!(huffman::encode(b"custom-key"), hex("25a8 49e9 5ba9 7d7f"));
}

// ---- errors ----

#[test]
fn decoding_errors() {
    let mut d = Decoder::new();
    assert_eq!(decode(&mut d, &[0x80]).unwrap_err(), HpackError::ZeroIndex);
    assert_eq!(
        decode(&mut d, &idx(62)).unwrap_err(),
        HpackError::BadIndex(62)
    );
    // Integer overflow: a continuation that never ends / gets too large.
    assert_eq!(
        decode(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap_err(),
        HpackError::IntegerOverflow
    );
    // A string running past the block.
    assert_eq!(
        decode(&mut d, &[0x00, 0x05, b'a']).unwrap_err(),
        HpackError::Truncated
    );
    // Huffman EOS in a name.
    assert!(matches!(
        decode(&mut d, &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00]).unwrap_err(),
        HpackError::Huffman(HuffmanError::Eos)
    ));
    // Size update above the announced limit, and after a field.
    assert!(matches!(
        decode(&mut d, &[0x3f, 0xe2, 0x1f]).unwrap_err(),
        HpackError::SizeUpdateTooLarge(..)
    ));
    assert_eq!(
        decode(&mut d, &[0x82, 0x20]).unwrap_err(),
        HpackError::LateSizeUpdate
    );
    // Fields decoded before the error are kept.
    let mut out = Block::default();
    assert!(d.decode(&[0x82, 0x80], &mut out).is_err());
    assert_eq!(out.fields, vec![hdr(":method", "GET")]);
}

#[test]
fn size_update_to_zero_evicts_everything() {
    let mut d = Decoder::new();
    decode(&mut d, &inc("a", "b")).unwrap();
    assert_eq!(d.table_size(), 34);
    decode(&mut d, &[0x20]).unwrap();
    assert_eq!(d.table_size(), 0);
    assert_eq!(
        decode(&mut d, &idx(62)).unwrap_err(),
        HpackError::BadIndex(62)
    );
}

// ---- unknown older entries ----

#[test]
fn mid_stream_decoder_marks_unknown_references() {
    let mut d = Decoder::mid_stream();
    // 62 is unknown: undecoded, the static fields around it decode.
    let b = decode(&mut d, &[&idx(2)[..], &idx(62), &idx(4)].concat()).unwrap();
    assert_eq!(fields(&b), pairs(&[(":method", "GET"), (":path", "/")]));
    assert_eq!(b.undecoded, 1);
    // A new insertion takes index 62; index 63 is still unknown.
    let b = decode(&mut d, &[inc("x-new", "1"), idx(62), idx(63)].concat()).unwrap();
    assert_eq!(fields(&b), pairs(&[("x-new", "1"), ("x-new", "1")]));
    assert_eq!(b.undecoded, 1);
    // A literal whose name is an unknown entry: not decoded, but it is inserted (as a hole),
    // which shifts the known entry to 63.
    let b = decode(
        &mut d,
        &[inc_named(64, "v"), idx(63), lit_named(62, "w")].concat(),
    )
    .unwrap();
    assert_eq!(fields(&b), pairs(&[("x-new", "1")]));
    assert_eq!(b.undecoded, 2);
    assert!(d.is_lossy());
    // A literal with a new name always decodes.
    let b = decode(&mut d, &lit("grpc-status", "0")).unwrap();
    assert_eq!(fields(&b), pairs(&[("grpc-status", "0")]));
}

#[test]
fn lost_sync_keeps_known_entries_and_recovers_on_size_update() {
    let mut d = Decoder::new();
    decode(&mut d, &inc("a", "1")).unwrap();
    d.lose_sync();
    // Entry 62 is still known; 63 may exist (unknown) rather than being an error.
    let b = decode(&mut d, &[idx(62), idx(63)].concat()).unwrap();
    assert_eq!(fields(&b), pairs(&[("a", "1")]));
    assert_eq!(b.undecoded, 1);
    // Insertions beyond the announced limit (4096) evict the oldest known entries only.
    for i in 0..200 {
        decode(&mut d, &inc("k", &format!("{i:04}"))).unwrap();
    }
    assert!(d.table_size() <= 4096);
    let b = decode(&mut d, &idx(62)).unwrap();
    assert_eq!(fields(&b), pairs(&[("k", "0199")]));
    // A size update to 0 empties the real table too: fully known again.
    decode(&mut d, &[0x20]).unwrap();
    assert!(!d.is_lossy());
    assert_eq!(
        decode(&mut d, &idx(62)).unwrap_err(),
        HpackError::BadIndex(62)
    );
}

#[test]
fn exact_max_with_no_room_left_means_known_again() {
    let mut d = Decoder::mid_stream();
    decode(&mut d, &[0x3f, 0x21]).unwrap(); // size update to 64
    assert!(d.is_lossy() || d.table_size() == 0);
    decode(&mut d, &inc("ab", "cd")).unwrap(); // 36 bytes: no room for another entry
    assert!(!d.is_lossy());
    assert_eq!(
        decode(&mut d, &idx(63)).unwrap_err(),
        HpackError::BadIndex(63)
    );
}

#[test]
fn decoded_size_is_bounded() {
    use super::super::hpack::MAX_DECODED_BLOCK;
    let mut d = Decoder::new();
    decode(&mut d, &inc("x-big", &"v".repeat(4000))).unwrap();
    let block: Vec<u8> = std::iter::repeat_n(idx(62), 1000).flatten().collect();
    let b = decode(&mut d, &block).unwrap();
    assert!(b.truncated);
    assert!(b.bytes <= MAX_DECODED_BLOCK);
    assert_eq!(b.fields.len(), MAX_DECODED_BLOCK / 4005);
}

/// The field the kernel appends to a header block (`ebpf/socktrace-ebpf/src/inject.rs`,
/// `h2_inject`), byte for byte as it composes it: literal without indexing, new name, no
/// Huffman coding.
fn injected_field(value: &str) -> Vec<u8> {
    let mut f = vec![0x00, 11];
    f.extend_from_slice(b"traceparent");
    f.push(value.len() as u8);
    f.extend_from_slice(value.as_bytes());
    f
}

#[test]
fn the_injected_field_decodes_after_any_block_and_leaves_the_table_alone() {
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let field = injected_field(TP);
    assert_eq!(
        field.len(),
        socktrace_common::TRACEPARENT_H2_FIELD_LEN as usize
    );
    // RFC 7541 C.3.1 then C.3.2 (the second indexes what the first added), each with the field
    // appended: the same fields plus `traceparent`, and the same dynamic table as without it.
    let blocks = [
        hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        hex("8286 84be 5808 6e6f 2d63 6163 6865"),
    ];
    let (mut plain, mut with) = (Decoder::new(), Decoder::new());
    for block in &blocks {
        let expected = fields(&decode(&mut plain, block).unwrap());
        let got = fields(&decode(&mut with, &[&block[..], &field[..]].concat()).unwrap());
        let mut want = expected.clone();
        want.push(("traceparent".to_owned(), TP.to_owned()));
        assert_eq!(got, want);
        assert_eq!(table(&with), table(&plain));
    }
}

#[test]
fn the_kernels_huffman_form_of_the_name_is_the_rfc_code() {
    assert_eq!(
        huffman::encode(b"traceparent"),
        socktrace_common::TRACEPARENT_HUFFMAN
    );
    let mut out = Vec::new();
    huffman::decode(&socktrace_common::TRACEPARENT_HUFFMAN, &mut out).unwrap();
    assert_eq!(out, b"traceparent");
}
