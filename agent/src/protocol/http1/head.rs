//! Head parsing (through httparse) and message framing rules.

use super::{Header, MAX_METHOD_LEN, RequestHead, ResponseHead, is_target_byte, is_tchar};

/// Headers tried on the stack first; heads with more get one retry with [`MAX_HEADERS`].
const FEW_HEADERS: usize = 64;
/// A 64 KiB head cannot hold more "a:b\r\n" lines than this.
const MAX_HEADERS: usize = super::MAX_HEAD_LEN / 4;

/// What a parse attempt on buffered bytes says.
pub(super) enum Parsed<T> {
    /// A full head, and how many bytes it took.
    Complete(T, usize),
    /// Valid so far.
    Partial,
    Invalid,
}

/// Which kind of message one direction carries; both parse with the same code paths.
pub(super) enum AnyHead {
    Request(RequestHead),
    Response(ResponseHead),
}

/// Lenient on purpose: a tracer reports what went over the wire, and servers and browsers accept
/// much of what the RFC forbids (extra spaces, junk header lines, obs-fold). Rejecting those
/// would lose whole exchanges for no gain.
fn config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_space_before_first_header_name(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    config
}

fn own_headers(headers: &[httparse::Header<'_>]) -> Vec<Header> {
    own_headers_where(headers, |_| true)
}

/// A response's headers matter only for its framing: the others are not copied (a copy of
/// every header of every response showed in the profile of a fast server).
fn framing_headers(headers: &[httparse::Header<'_>]) -> Vec<Header> {
    own_headers_where(headers, |name| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    })
}

fn own_headers_where(headers: &[httparse::Header<'_>], keep: impl Fn(&str) -> bool) -> Vec<Header> {
    headers
        .iter()
        .filter(|h| keep(h.name))
        .map(|h| Header {
            name: h.name.to_owned(),
            value: String::from_utf8_lossy(h.value).trim().to_owned(),
        })
        .collect()
}

fn try_request<'b>(
    buf: &'b [u8],
    slots: &mut [httparse::Header<'b>],
) -> Result<Parsed<RequestHead>, httparse::Error> {
    let mut req = httparse::Request::new(slots);
    match config().parse_request(&mut req, buf)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(len) => Ok(Parsed::Complete(
            RequestHead {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                version_minor: req.version.unwrap_or_default(),
                headers: own_headers(req.headers),
                head_len: len,
            },
            len,
        )),
    }
}

fn try_response<'b>(
    buf: &'b [u8],
    slots: &mut [httparse::Header<'b>],
) -> Result<Parsed<ResponseHead>, httparse::Error> {
    let mut resp = httparse::Response::new(slots);
    match config().parse_response(&mut resp, buf)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(len) => Ok(Parsed::Complete(
            ResponseHead {
                status: resp.code.unwrap_or_default(),
                reason: resp.reason.unwrap_or_default().to_owned(),
                version_minor: resp.version.unwrap_or_default(),
                headers: framing_headers(resp.headers),
                head_len: len,
            },
            len,
        )),
    }
}

/// `try_request` or `try_response`: one parse attempt with the given header slots.
type TryParse<T> =
    for<'b> fn(&'b [u8], &mut [httparse::Header<'b>]) -> Result<Parsed<T>, httparse::Error>;

/// Parses a request or response head at the start of `buf`.
pub(super) fn parse(is_request: bool, buf: &[u8]) -> Parsed<AnyHead> {
    fn run<T>(buf: &[u8], f: TryParse<T>) -> Parsed<T> {
        let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
        match f(buf, &mut few) {
            Ok(p) => p,
            Err(httparse::Error::TooManyHeaders) => {
                let mut many = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
                f(buf, &mut many).unwrap_or(Parsed::Invalid)
            }
            Err(_) => Parsed::Invalid,
        }
    }
    fn map<T>(p: Parsed<T>, f: fn(T) -> AnyHead) -> Parsed<AnyHead> {
        match p {
            Parsed::Complete(h, n) => Parsed::Complete(f(h), n),
            Parsed::Partial => Parsed::Partial,
            Parsed::Invalid => Parsed::Invalid,
        }
    }
    if is_request {
        map(run(buf, try_request), AnyHead::Request)
    } else {
        map(run(buf, try_response), AnyHead::Response)
    }
}

/// Cheap check of the first bytes of a head, so that a non-HTTP stream is rejected at once
/// instead of after 64 KiB of buffering. Looks at no more than ~40 bytes, so calling it on every
/// push is O(1). `false` means "cannot be a head".
pub(super) fn prefix_plausible(is_request: bool, buf: &[u8]) -> bool {
    if !is_request {
        return super::detect_response(buf) != super::Detect::No;
    }
    let method_len = buf
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|&&b| is_tchar(b))
        .count();
    if method_len > MAX_METHOD_LEN {
        return false;
    }
    let Some(&sep) = buf.get(method_len) else {
        return true;
    };
    if method_len == 0 || sep != b' ' {
        return false;
    }
    // httparse (as configured) allows several spaces before the target.
    match buf[method_len..].iter().take(8).find(|&&b| b != b' ') {
        None => true,
        Some(&b) => is_target_byte(b),
    }
}

/// Whether `buf` starts with one of [`super::COMMON_METHODS`] and a space.
pub(super) fn common_method(buf: &[u8]) -> bool {
    super::COMMON_METHODS
        .iter()
        .any(|m| buf.starts_with(m) && buf.get(m.len()) == Some(&b' '))
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response without a length (RFC 9112 §6.3 item 8): the body ends when the connection does.
    UntilClose,
    /// The head is fine but the body length cannot be known (conflicting Content-Length, a
    /// request with a non-chunked transfer coding): report the head, resync after it.
    Invalid,
}

/// Transfer-Encoding wins over Content-Length (RFC 9112 §6.3 item 3), and only a final
/// "chunked" coding gives a length. `None` when there is no Transfer-Encoding at all.
fn transfer_chunked(headers: &[Header]) -> Option<bool> {
    let mut last: Option<&str> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        for coding in h.value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            last = Some(coding);
        }
    }
    last.map(|c| c.eq_ignore_ascii_case("chunked"))
}

/// All Content-Length values must agree (a list "5, 5" is allowed, RFC 9110 §8.6). Values too
/// large for u64 saturate: the body is then skipped by count until close, which is what a
/// receiver trusting that header would do too.
fn content_length(headers: &[Header]) -> Option<Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for v in h.value.split(',').map(str::trim) {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Some(Err(()));
            }
            let n = v.bytes().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            match found {
                Some(prev) if prev != n => return Some(Err(())),
                _ => found = Some(n),
            }
        }
    }
    found.map(Ok)
}

fn length_framing(headers: &[Header], otherwise: Framing) -> Framing {
    match content_length(headers) {
        None => otherwise,
        Some(Ok(0)) => Framing::None,
        Some(Ok(n)) => Framing::Length(n),
        Some(Err(())) => Framing::Invalid,
    }
}

/// A request has a body only if it says so.
pub(super) fn request_framing(head: &RequestHead) -> Framing {
    match transfer_chunked(&head.headers) {
        Some(true) => Framing::Chunked,
        // RFC 9112 §6.3: the server answers 400 and closes; there is no length to follow.
        Some(false) => Framing::Invalid,
        None => length_framing(&head.headers, Framing::None),
    }
}

/// What the request was, as far as the response's framing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MethodKind {
    Head,
    Connect,
    Other,
}

impl MethodKind {
    pub(super) fn of(method: &str) -> Self {
        // Methods are case-sensitive: "head" is an unknown extension method, not HEAD.
        match method {
            "HEAD" => Self::Head,
            "CONNECT" => Self::Connect,
            _ => Self::Other,
        }
    }
}

/// Final responses only (1xx other than 101 never reach here). A successful CONNECT is the
/// caller's business (tunnel), so it does not appear here.
pub(super) fn response_framing(head: &ResponseHead, method: MethodKind) -> Framing {
    if method == MethodKind::Head || head.status == 204 || head.status == 304 {
        return Framing::None;
    }
    match transfer_chunked(&head.headers) {
        Some(true) => Framing::Chunked,
        // RFC 9112 §6.3 item 4: a response with another final coding is read until close.
        Some(false) => Framing::UntilClose,
        None => length_framing(&head.headers, Framing::UntilClose),
    }
}

/// Parses one chunk-size line (ending in '\n', extensions allowed) into the chunk size. Bare-LF
/// lines are accepted like the heads are; httparse only knows CRLF.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let parsed = if line.ends_with(b"\r\n") {
        httparse::parse_chunk_size(line)
    } else {
        let mut fixed = line[..line.len().saturating_sub(1)].to_vec();
        fixed.extend_from_slice(b"\r\n");
        httparse::parse_chunk_size(&fixed)
    };
    match parsed {
        Ok(httparse::Status::Complete((_, size))) => Some(size),
        _ => None,
    }
}
