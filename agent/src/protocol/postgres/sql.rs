//! A PostgreSQL-flavoured SQL lexer, good enough to blank literals out of query text and to
//! name a statement's operation and table. It never fails: every byte of input belongs to
//! exactly one token, and an unterminated string, quoted identifier or comment runs to the end.
//!
//! Lexing follows PostgreSQL's rules with `standard_conforming_strings = on` (the default since
//! 9.1): a backslash is an ordinary character in `'...'` and an escape only in `E'...'`.

use std::ops::Range;

/// Token kinds. Spans are byte ranges of the input, always on character boundaries (every
/// boundary the lexer picks is next to an ASCII byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Space,
    Comment,
    /// Unquoted identifier or keyword (may contain digits and `$` after the first character).
    Word,
    /// `"..."` or `U&"..."`; `terminated` false when the input ended inside it.
    Quoted {
        terminated: bool,
    },
    /// Any string literal: '...', E'...', B'...', X'...', N'...', U&'...', $tag$...$tag$.
    Str,
    Number,
    /// `$1`.
    Param,
    /// Any other single character (operators, punctuation).
    Punct,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            s: sql.as_bytes(),
            i: 0,
        }
    }

    fn at(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }

    /// End of a quoted body starting at `from` (just after the opening quote): just after the
    /// closing quote, or the input's end; and whether the closing quote was found.
    fn quoted_end(&self, from: usize, quote: u8, backslash: bool) -> (usize, bool) {
        let s = self.s;
        let mut j = from;
        while j < s.len() {
            let b = s[j];
            if backslash && b == b'\\' {
                j += 2;
                continue;
            }
            if b == quote {
                if s.get(j + 1) == Some(&quote) {
                    j += 2;
                    continue;
                }
                return (j + 1, true);
            }
            j += 1;
        }
        (s.len(), false)
    }

    /// `$tag$` at `i`: the tag's length including both dollars.
    fn dollar_tag(&self, i: usize) -> Option<usize> {
        let s = self.s;
        let mut j = i + 1;
        if s.get(j).is_some_and(|&b| ident_start(b)) {
            j += 1;
            while s
                .get(j)
                .is_some_and(|&b| ident_start(b) || b.is_ascii_digit())
            {
                j += 1;
            }
        }
        (s.get(j) == Some(&b'$')).then_some(j + 1 - i)
    }

    fn number_end(&self) -> usize {
        let s = self.s;
        let mut j = self.i;
        if s[j] == b'0' && matches!(s.get(j + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
            j += 2;
            while s
                .get(j)
                .is_some_and(|&b| b.is_ascii_hexdigit() || b == b'_')
            {
                j += 1;
            }
            return j;
        }
        let digits = |mut j: usize| {
            while s.get(j).is_some_and(|&b| b.is_ascii_digit() || b == b'_') {
                j += 1;
            }
            j
        };
        j = digits(j);
        if s.get(j) == Some(&b'.') && s.get(j + 1) != Some(&b'.') {
            j = digits(j + 1);
        }
        if matches!(s.get(j), Some(b'e' | b'E')) {
            let k = if matches!(s.get(j + 1), Some(b'+' | b'-')) {
                j + 2
            } else {
                j + 1
            };
            if s.get(k).is_some_and(u8::is_ascii_digit) {
                j = digits(k);
            }
        }
        j
    }

    fn next_tok(&mut self) -> Option<(Tok, usize, usize)> {
        let s = self.s;
        let start = self.i;
        let b = *s.get(start)?;
        let (tok, end) = match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                let mut j = start;
                while s
                    .get(j)
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == 0x0b)
                {
                    j += 1;
                }
                (Tok::Space, j)
            }
            b'-' if self.at(1) == Some(b'-') => {
                let end = s[start..]
                    .iter()
                    .position(|&b| b == b'\n' || b == b'\r')
                    .map_or(s.len(), |p| start + p);
                (Tok::Comment, end)
            }
            b'/' if self.at(1) == Some(b'*') => {
                // Block comments nest.
                let mut depth = 0usize;
                let mut j = start;
                let mut end = s.len();
                while j + 1 < s.len() {
                    if s[j] == b'/' && s[j + 1] == b'*' {
                        depth += 1;
                        j += 2;
                    } else if s[j] == b'*' && s[j + 1] == b'/' {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                (Tok::Comment, end)
            }
            b'\'' => (Tok::Str, self.quoted_end(start + 1, b'\'', false).0),
            b'"' => {
                let (end, terminated) = self.quoted_end(start + 1, b'"', false);
                (Tok::Quoted { terminated }, end)
            }
            b'e' | b'E' if self.at(1) == Some(b'\'') => {
                (Tok::Str, self.quoted_end(start + 2, b'\'', true).0)
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if self.at(1) == Some(b'\'') => {
                (Tok::Str, self.quoted_end(start + 2, b'\'', false).0)
            }
            b'u' | b'U' if self.at(1) == Some(b'&') && self.at(2) == Some(b'\'') => {
                (Tok::Str, self.quoted_end(start + 3, b'\'', false).0)
            }
            b'u' | b'U' if self.at(1) == Some(b'&') && self.at(2) == Some(b'"') => {
                let (end, terminated) = self.quoted_end(start + 3, b'"', false);
                (Tok::Quoted { terminated }, end)
            }
            b'$' if self.at(1).is_some_and(|b| b.is_ascii_digit()) => {
                let mut j = start + 1;
                while s.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                (Tok::Param, j)
            }
            b'$' => match self.dollar_tag(start) {
                Some(n) => {
                    let tag = &s[start..start + n];
                    let body = start + n;
                    let end = s[body..]
                        .windows(n)
                        .position(|w| w == tag)
                        .map_or(s.len(), |p| body + p + n);
                    (Tok::Str, end)
                }
                None => (Tok::Punct, start + 1),
            },
            b'0'..=b'9' => (Tok::Number, self.number_end()),
            b'.' if self.at(1).is_some_and(|b| b.is_ascii_digit()) => {
                (Tok::Number, self.number_end())
            }
            b if ident_start(b) => {
                let mut j = start + 1;
                while s.get(j).is_some_and(|&b| ident_cont(b)) {
                    j += 1;
                }
                (Tok::Word, j)
            }
            _ => {
                // One character (a multi-byte one is consumed whole by the identifier arm, so
                // this is ASCII).
                (Tok::Punct, start + 1)
            }
        };
        self.i = end.max(start + 1).min(s.len());
        Some((tok, start, self.i))
    }
}

impl Iterator for Lexer<'_> {
    type Item = (Tok, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_tok()
    }
}

/// `db.query.text` sanitisation: every literal becomes `?`.
///
/// * Strings of every kind ('...' with '' escapes, E'...' with backslash escapes, B'...',
///   X'...', N'...', U&'...', `$$...$$` and `$tag$...$tag$`) and numbers (integers, decimals,
///   exponents, `0x`/`0o`/`0b`, `1_000`) become one `?` each. Array literals are strings
///   (`'{1,2}'` -> `?`) and `ARRAY[1, 2]` becomes `ARRAY[?, ?]`. A minus sign stays (`-?`).
/// * Identifiers, keywords (`TRUE`, `NULL` included), `$1` placeholders, operators and
///   whitespace are kept as written; digits inside identifiers (`t1`, `col_2`) are not numbers.
///   `"quoted identifiers"` are kept, unless unterminated.
/// * Comments are removed (they may hold anything, e.g. sqlcommenter values); one space stands
///   in for a comment between two tokens that would otherwise touch.
/// * Anything unterminated (string, quoted identifier) is replaced by one `?` to the end; an
///   unterminated comment is removed to the end.
///
/// The output is never longer than the input.
pub fn sanitize(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let s = sql.as_bytes();
    for (tok, a, b) in Lexer::new(sql) {
        match tok {
            Tok::Str | Tok::Number | Tok::Quoted { terminated: false } => out.push('?'),
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
            _ => out.push_str(&sql[a..b]),
        }
    }
    out
}

/// The statements of a simple-query text, as byte ranges, in the order the server runs them:
/// split at every `;` outside strings, quoted identifiers, comments and parentheses (`CREATE
/// RULE ... DO (INSERT ...; INSERT ...)` is one statement), each piece trimmed of surrounding
/// whitespace, pieces holding nothing but whitespace and comments left out (the server skips
/// them too). The server answers each piece with one result, so the n-th result of the query
/// belongs to the n-th piece.
///
/// A text with a SQL-standard function body (`BEGIN ATOMIC ... END`, whose inner `;` do not
/// end the statement) is not split: it is returned whole, as one piece.
pub fn statement_ranges(sql: &str) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut significant = false;
    let mut last_word: Option<&str> = None;
    let mut depth = 0usize;
    // The lexer's whitespace (ASCII only), so that a trimmed piece keeps its first and last
    // tokens and its bounds stay on character boundaries.
    let space = |c: &&u8| matches!(**c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let trimmed = |r: Range<usize>| {
        let piece = &sql.as_bytes()[r.clone()];
        let lead = piece.iter().take_while(space).count();
        let trail = piece[lead..].iter().rev().take_while(space).count();
        r.start + lead..r.end - trail
    };
    for (tok, a, b) in Lexer::new(sql) {
        match tok {
            Tok::Punct if &sql[a..b] == "(" => {
                depth += 1;
                last_word = None;
                significant = true;
            }
            Tok::Punct if &sql[a..b] == ")" => {
                depth = depth.saturating_sub(1);
                last_word = None;
                significant = true;
            }
            Tok::Punct if depth == 0 && &sql[a..b] == ";" => {
                if significant {
                    pieces.push(trimmed(start..a));
                }
                start = b;
                significant = false;
                last_word = None;
            }
            Tok::Space | Tok::Comment => {}
            Tok::Word => {
                let word = &sql[a..b];
                if word.eq_ignore_ascii_case("ATOMIC")
                    && last_word.is_some_and(|w| w.eq_ignore_ascii_case("BEGIN"))
                {
                    return vec![trimmed(0..sql.len())];
                }
                last_word = Some(word);
                significant = true;
            }
            _ => {
                last_word = None;
                significant = true;
            }
        }
    }
    if significant {
        pieces.push(trimmed(start..sql.len()));
    }
    pieces
}

/// Significant tokens: no whitespace, no comments.
fn tokens(sql: &str) -> impl Iterator<Item = (Tok, &str)> {
    Lexer::new(sql)
        .filter(|(t, _, _)| !matches!(t, Tok::Space | Tok::Comment))
        .map(move |(t, a, b)| (t, &sql[a..b]))
}

fn is_kw(tok: Option<&(Tok, &str)>, kw: &str) -> bool {
    matches!(tok, Some((Tok::Word, w)) if w.eq_ignore_ascii_case(kw))
}

/// `db.operation.name` and `db.collection.name` of a statement.
///
/// The operation is the first keyword, upper-cased, after leading whitespace, comments and
/// opening parentheses. For `WITH`, it is the main statement's keyword (`WITH x AS (...)
/// SELECT ...` -> `SELECT`) when the common table expressions parse, else `WITH`.
///
/// The collection is the table the statement names in its main clause: `SELECT ... FROM t`,
/// `INSERT INTO t`, `UPDATE [ONLY] t`, `DELETE FROM [ONLY] t`, `MERGE INTO t`, `COPY t`,
/// `CREATE [TEMP|UNLOGGED|...] TABLE [IF NOT EXISTS] t`, `DROP TABLE [IF EXISTS] t`,
/// `TRUNCATE [TABLE] [ONLY] t`, `ALTER TABLE [IF EXISTS] [ONLY] t`,
/// `CREATE [UNIQUE] INDEX ... ON t`. Schema-qualified names are kept as written
/// (`public.users`); quoted parts are unquoted (`"My Table"` -> `My Table`). With several
/// tables (joins, `FROM a, b`, `DROP TABLE a, b`) the first one is reported. None when the
/// table is not a plain name: a subquery, a function (`FROM generate_series(1, 3)`), a name
/// defined by the statement's own `WITH`, or no table at all. Only the first statement of a
/// multi-statement text is looked at (see [`statement_ranges`]).
pub fn operation_and_collection(sql: &str) -> (Option<String>, Option<String>) {
    // Leading parentheses are dropped before collecting, so that the bound on tokens looked at
    // applies to the statement itself.
    let toks: Vec<(Tok, &str)> = tokens(sql)
        .skip_while(|(t, s)| *t == Tok::Punct && *s == "(")
        .take_while(|(t, s)| !(*t == Tok::Punct && *s == ";"))
        .take(100_000)
        .collect();
    let i = 0;
    let Some(&(Tok::Word, first)) = toks.get(i) else {
        return (None, None);
    };
    let op = first.to_ascii_uppercase();
    if op == "WITH" {
        return match with_main(&toks, i + 1) {
            Some((j, ctes)) => {
                let Some(&(Tok::Word, w)) = toks.get(j) else {
                    return (Some(op), None);
                };
                let main = w.to_ascii_uppercase();
                let table = collection(&main, &toks, j + 1)
                    .filter(|t| !ctes.iter().any(|c| c.eq_ignore_ascii_case(t)));
                (Some(main), table)
            }
            None => (Some(op), None),
        };
    }
    let table = collection(&op, &toks, i + 1);
    (Some(op), table)
}

/// After `WITH`: skips `[RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (...)`, ... and
/// returns the index of the main statement's keyword and the CTE names.
fn with_main(toks: &[(Tok, &str)], mut i: usize) -> Option<(usize, Vec<String>)> {
    let mut names = Vec::new();
    if is_kw(toks.get(i), "RECURSIVE") {
        i += 1;
    }
    loop {
        let (name, next) = name_at(toks, i)?;
        names.push(name);
        i = next;
        if matches!(toks.get(i), Some((Tok::Punct, "("))) {
            i = skip_parens(toks, i)?;
        }
        if !is_kw(toks.get(i), "AS") {
            return None;
        }
        i += 1;
        if is_kw(toks.get(i), "NOT") {
            i += 1;
        }
        if is_kw(toks.get(i), "MATERIALIZED") {
            i += 1;
        }
        if !matches!(toks.get(i), Some((Tok::Punct, "("))) {
            return None;
        }
        i = skip_parens(toks, i)?;
        if matches!(toks.get(i), Some((Tok::Punct, ","))) {
            i += 1;
            continue;
        }
        return matches!(toks.get(i), Some((Tok::Word, _))).then_some((i, names));
    }
}

/// From an opening parenthesis at `i` to just after its match.
fn skip_parens(toks: &[(Tok, &str)], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some((t, s)) = toks.get(i) {
        if *t == Tok::Punct {
            match *s {
                "(" | "[" => depth += 1,
                ")" | "]" => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// A possibly qualified name at `i`: (name as written with quoted parts unquoted, next index).
fn name_at(toks: &[(Tok, &str)], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match toks.get(i) {
            Some((Tok::Word, w)) => name.push_str(w),
            Some((Tok::Quoted { terminated: true }, q)) => {
                let inner = q.strip_prefix("U&").or(q.strip_prefix("u&")).unwrap_or(q);
                name.push_str(&inner[1..inner.len() - 1].replace("\"\"", "\""));
            }
            _ => return None,
        }
        i += 1;
        if matches!(toks.get(i), Some((Tok::Punct, "."))) {
            name.push('.');
            i += 1;
        } else {
            return Some((name, i));
        }
    }
}

/// The table of a statement whose keyword is `op`, reading from `i`.
fn collection(op: &str, toks: &[(Tok, &str)], mut i: usize) -> Option<String> {
    let kw = |i: usize, k: &str| is_kw(toks.get(i), k);
    match op {
        "SELECT" => {
            let mut depth = 0usize;
            loop {
                match toks.get(i)? {
                    (Tok::Punct, "(" | "[") => depth += 1,
                    (Tok::Punct, ")" | "]") => depth = depth.saturating_sub(1),
                    (Tok::Word, w) if depth == 0 && w.eq_ignore_ascii_case("FROM") => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        "INSERT" | "MERGE" => {
            if !kw(i, "INTO") {
                return None;
            }
            i += 1;
        }
        "UPDATE" => {}
        "DELETE" => {
            if !kw(i, "FROM") {
                return None;
            }
            i += 1;
        }
        "COPY" => {}
        "TRUNCATE" => {
            if kw(i, "TABLE") {
                i += 1;
            }
        }
        "ALTER" => {
            if !kw(i, "TABLE") {
                return None;
            }
            i += 1;
            if kw(i, "IF") && kw(i + 1, "EXISTS") {
                i += 2;
            }
        }
        "DROP" => {
            if !kw(i, "TABLE") {
                return None;
            }
            i += 1;
            if kw(i, "IF") && kw(i + 1, "EXISTS") {
                i += 2;
            }
        }
        "CREATE" => {
            const MODIFIERS: [&str; 6] =
                ["GLOBAL", "LOCAL", "TEMP", "TEMPORARY", "UNLOGGED", "UNIQUE"];
            while MODIFIERS.iter().any(|m| kw(i, m)) {
                i += 1;
            }
            if kw(i, "TABLE") {
                i += 1;
                if kw(i, "IF") && kw(i + 1, "NOT") && kw(i + 2, "EXISTS") {
                    i += 3;
                }
            } else if kw(i, "INDEX") {
                // CREATE INDEX [CONCURRENTLY] [[IF NOT EXISTS] name] ON [ONLY] table
                while !kw(i, "ON") {
                    toks.get(i)?;
                    i += 1;
                }
                i += 1;
            } else {
                return None;
            }
        }
        _ => return None,
    }
    if kw(i, "ONLY") {
        i += 1;
    }
    let (name, next) = name_at(toks, i)?;
    // A function call in FROM is not a table.
    if matches!(toks.get(next), Some((Tok::Punct, "("))) && op == "SELECT" {
        return None;
    }
    if op == "SELECT" && name.eq_ignore_ascii_case("LATERAL") {
        return None;
    }
    Some(name)
}

/// SQL that drops server-side prepared statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Dealloc {
    /// `DEALLOCATE [PREPARE] ALL`.
    All,
    /// `DEALLOCATE [PREPARE] name` (unquoted names are folded to lower case, as the server
    /// does).
    Named(String),
    /// `DISCARD ALL`: statements and portals.
    Discard,
}

pub(super) fn deallocation(sql: &str) -> Option<Dealloc> {
    let mut t = tokens(sql).take(4);
    let (Tok::Word, first) = t.next()? else {
        return None;
    };
    if first.eq_ignore_ascii_case("DISCARD") {
        return matches!(t.next(), Some((Tok::Word, w)) if w.eq_ignore_ascii_case("ALL"))
            .then_some(Dealloc::Discard);
    }
    if !first.eq_ignore_ascii_case("DEALLOCATE") {
        return None;
    }
    let mut next = t.next()?;
    if matches!(next, (Tok::Word, w) if w.eq_ignore_ascii_case("PREPARE")) {
        next = t.next()?;
    }
    match next {
        (Tok::Word, w) if w.eq_ignore_ascii_case("ALL") => Some(Dealloc::All),
        (Tok::Word, w) => Some(Dealloc::Named(w.to_lowercase())),
        (Tok::Quoted { terminated: true }, q) if q.starts_with('"') => {
            Some(Dealloc::Named(q[1..q.len() - 1].replace("\"\"", "\"")))
        }
        _ => None,
    }
}
