//! A MySQL-flavoured SQL lexer for blanking literals out of query text. It differs from the
//! PostgreSQL one (`protocol::postgres::sanitize`) where a literal could otherwise leak:
//!
//! * `"..."` is a string literal (MySQL's default; with `ANSI_QUOTES` it would be an
//!   identifier, which is then blanked too: over-sanitizing, never leaking);
//! * a backslash escapes the next character inside `'...'` and `"..."`;
//! * `` `...` `` quotes identifiers (kept);
//! * `#` and `-- ` (dash dash followed by a space or control character) start a comment to
//!   the end of the line; `/* ... */` comments, including the executable `/*! ... */` ones,
//!   are removed whole;
//! * hexadecimal / bit literals (`X'..'`, `0x..`, `B'..'`, `0b..`), `N'..'` and charset
//!   introducers (`_utf8mb4'..'`, the introducer is kept) are literals.
//!
//! Operation and table names come from the PostgreSQL helper run on the sanitized text with
//! backtick identifiers turned into double-quoted ones, which that lexer understands: once
//! every literal is gone the two dialects lex the rest alike.

/// Token kinds; spans are byte ranges of the input, always on character boundaries (every
/// boundary the lexer picks is next to an ASCII byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Space,
    Comment,
    Word,
    /// `` `...` ``; `terminated` false when the input ended inside it.
    Backtick {
        terminated: bool,
    },
    /// Any literal: strings, numbers, hex and bit values.
    Literal,
    Other,
}

fn ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// End of a quoted string starting at `i` (the opening quote): just after the closing quote,
/// or the input's end.
fn string_end(s: &[u8], i: usize, quote: u8) -> usize {
    let mut j = i + 1;
    while j < s.len() {
        let c = s[j];
        if c == b'\\' {
            j += 2;
            continue;
        }
        if c == quote {
            if s.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    s.len()
}

/// The next token at `i`: (kind, end). Always advances.
fn next(s: &[u8], i: usize) -> (Tok, usize) {
    let c = s[i];
    let at = |k: usize| s.get(i + k).copied();
    match c {
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
            let mut j = i + 1;
            while s.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
                j += 1;
            }
            (Tok::Space, j)
        }
        b'#' => (Tok::Comment, line_end(s, i)),
        b'-' if at(1) == Some(b'-') && at(2).is_none_or(|b| b <= b' ') => {
            (Tok::Comment, line_end(s, i))
        }
        b'/' if at(1) == Some(b'*') => {
            let mut j = i + 2;
            while j < s.len() {
                if s[j] == b'*' && s.get(j + 1) == Some(&b'/') {
                    return (Tok::Comment, j + 2);
                }
                j += 1;
            }
            (Tok::Comment, s.len())
        }
        b'\'' | b'"' => (Tok::Literal, string_end(s, i, c)),
        b'`' => {
            let mut j = i + 1;
            while j < s.len() {
                if s[j] == b'`' {
                    if s.get(j + 1) == Some(&b'`') {
                        j += 2;
                        continue;
                    }
                    return (Tok::Backtick { terminated: true }, j + 1);
                }
                j += 1;
            }
            (Tok::Backtick { terminated: false }, s.len())
        }
        // X'..', B'..', N'..': one literal.
        b'x' | b'X' | b'b' | b'B' | b'n' | b'N' if at(1) == Some(b'\'') => {
            (Tok::Literal, string_end(s, i + 1, b'\''))
        }
        b'0'..=b'9' => number(s, i),
        b'.' if at(1).is_some_and(|b| b.is_ascii_digit()) => number(s, i),
        _ if ident(c) => {
            let mut j = i + 1;
            while s.get(j).copied().is_some_and(ident) {
                j += 1;
            }
            (Tok::Word, j)
        }
        // `@var`, `@@sys`, operators, punctuation: one byte at a time (multi-byte UTF-8 is
        // covered by `ident`, as its bytes are >= 0x80).
        _ => (Tok::Other, i + 1),
    }
}

fn line_end(s: &[u8], i: usize) -> usize {
    s[i..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(s.len(), |p| i + p)
}

/// A number (or an identifier starting with digits, which MySQL allows: `1st_table`).
fn number(s: &[u8], i: usize) -> (Tok, usize) {
    let mut j = i;
    if s.get(i) == Some(&b'0') && matches!(s.get(i + 1), Some(b'x' | b'X' | b'b' | b'B')) {
        j = i + 2;
        while s.get(j).is_some_and(|b| b.is_ascii_hexdigit()) {
            j += 1;
        }
    } else {
        while s.get(j).is_some_and(|b| b.is_ascii_digit()) {
            j += 1;
        }
        if s.get(j) == Some(&b'.') {
            j += 1;
            while s.get(j).is_some_and(|b| b.is_ascii_digit()) {
                j += 1;
            }
        }
        if matches!(s.get(j), Some(b'e' | b'E')) {
            let mut k = j + 1;
            if matches!(s.get(k), Some(b'+' | b'-')) {
                k += 1;
            }
            if s.get(k).is_some_and(|b| b.is_ascii_digit()) {
                j = k;
                while s.get(j).is_some_and(|b| b.is_ascii_digit()) {
                    j += 1;
                }
            }
        }
    }
    if s.get(j).copied().is_some_and(ident) {
        // Digits then letters: an identifier (or a malformed number: blanked whole).
        let all_digits = s[i..j].iter().all(u8::is_ascii_digit);
        while s.get(j).copied().is_some_and(ident) {
            j += 1;
        }
        return (if all_digits { Tok::Word } else { Tok::Literal }, j);
    }
    (Tok::Literal, j.max(i + 1))
}

fn tokens(sql: &str) -> impl Iterator<Item = (Tok, usize, usize)> + '_ {
    let s = sql.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= s.len() {
            return None;
        }
        let (tok, end) = next(s, i);
        let end = end.clamp(i + 1, s.len());
        let a = i;
        i = end;
        Some((tok, a, end))
    })
}

/// `sql` with every literal replaced by `?`, comments removed (one space kept between tokens
/// that would otherwise touch), anything unterminated (string, backtick identifier) replaced
/// by one `?` to the end. Placeholders (`?`), identifiers, keywords and variables are kept.
/// The output is never longer than the input.
pub fn sanitize(sql: &str) -> String {
    rewrite(sql, false)
}

fn rewrite(sql: &str, pg: bool) -> String {
    let mut out = String::with_capacity(sql.len());
    let s = sql.as_bytes();
    for (tok, a, b) in tokens(sql) {
        match tok {
            Tok::Literal | Tok::Backtick { terminated: false } => out.push('?'),
            Tok::Comment => {
                let before = out
                    .as_bytes()
                    .last()
                    .is_some_and(|c| !c.is_ascii_whitespace());
                let after = s.get(b).is_some_and(|c| !c.is_ascii_whitespace());
                if before && after {
                    out.push(' ');
                }
            }
            Tok::Backtick { terminated: true } if pg => {
                // `a``b"c` -> "a`b""c"
                let inner = &sql[a + 1..b - 1];
                out.push('"');
                out.push_str(&inner.replace("``", "`").replace('"', "\"\""));
                out.push('"');
            }
            _ => out.push_str(&sql[a..b]),
        }
    }
    out
}

/// The statement's operation (first keyword, upper-cased) and main table, as
/// `protocol::postgres::operation_and_collection` finds them, on the text with its literals
/// and comments removed and backtick identifiers unquoted (`` `My Table` `` -> `My Table`).
pub fn operation_and_collection(sql: &str) -> (Option<String>, Option<String>) {
    crate::protocol::postgres::operation_and_collection(&rewrite(sql, true))
}
