//! `sanitize` and `operation_and_collection`: tables of inputs, and properties over generated
//! queries.

use super::super::sql::{Dealloc, deallocation, statement_ranges};
use super::super::{operation_and_collection, sanitize};
use super::Rng;

#[test]
fn sanitize_table() {
    for (input, want) in [
        // Numbers of every form; digits inside identifiers stay.
        (
            "SELECT * FROM t WHERE id = 42",
            "SELECT * FROM t WHERE id = ?",
        ),
        (
            "SELECT 1.5, .5, 1e10, 1.5E-3, 2e+7, 0x1F, 0o17, 0b101, 1_000_000",
            "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?",
        ),
        (
            "SELECT t1.col_2, a.b5 FROM s1.t2 t1",
            "SELECT t1.col_2, a.b5 FROM s1.t2 t1",
        ),
        ("SELECT -5, x-1, x+2", "SELECT -?, x-?, x+?"),
        ("SELECT 5::text, '5'::int", "SELECT ?::text, ?::int"),
        // Strings of every kind.
        ("SELECT 'abc'", "SELECT ?"),
        ("SELECT 'it''s', ''", "SELECT ?, ?"),
        ("SELECT E'a\\'b', e'\\\\', 'c'", "SELECT ?, ?, ?"),
        ("SELECT 'C:\\', 'x'", "SELECT ?, ?"),
        (
            "SELECT B'1010', b'1', X'ff', x'00', N'nat'",
            "SELECT ?, ?, ?, ?, ?",
        ),
        ("SELECT U&'d\\0061t\\+000061', u&'x'", "SELECT ?, ?"),
        (
            "SELECT interval '1 day', DATE '2024-01-01'",
            "SELECT interval ?, DATE ?",
        ),
        (
            "SELECT 'héllo wörld', naïve_col FROM tàble",
            "SELECT ?, naïve_col FROM tàble",
        ),
        // Dollar quoting, with tags and nested.
        ("SELECT $$a 'b' $1$$", "SELECT ?"),
        ("SELECT $tag$ x $$ y $tag$, 1", "SELECT ?, ?"),
        ("SELECT $a$ $b$ inner $b$ $a$", "SELECT ?"),
        ("DO $body$BEGIN RAISE 'x'; END$body$", "DO ?"),
        // Placeholders and identifiers are kept.
        ("SELECT $1, $2::int, '$3'", "SELECT $1, $2::int, ?"),
        (
            "SELECT * FROM t WHERE a = ? AND b = :name",
            "SELECT * FROM t WHERE a = ? AND b = :name",
        ),
        (
            "SELECT \"My Table\".\"Col 1\" FROM \"My Table\"",
            "SELECT \"My Table\".\"Col 1\" FROM \"My Table\"",
        ),
        (
            "SELECT \"a\"\"b\" FROM U&\"t\\0061\"",
            "SELECT \"a\"\"b\" FROM U&\"t\\0061\"",
        ),
        ("SELECT foo$bar, _x9 FROM t", "SELECT foo$bar, _x9 FROM t"),
        ("SELECT TRUE, FALSE, NULL", "SELECT TRUE, FALSE, NULL"),
        // Arrays.
        ("SELECT ARRAY[1, 2, 3]", "SELECT ARRAY[?, ?, ?]"),
        ("SELECT ARRAY['a','b']", "SELECT ARRAY[?,?]"),
        ("SELECT '{1,2}'::int[]", "SELECT ?::int[]"),
        (
            "SELECT x FROM t WHERE a IN (1, 2, 3)",
            "SELECT x FROM t WHERE a IN (?, ?, ?)",
        ),
        // Comments are removed.
        ("SELECT 1 -- secret 42\nFROM t", "SELECT ? \nFROM t"),
        ("SELECT/* c */1", "SELECT ?"),
        ("SELECT /* outer /* inner */ still */ 1", "SELECT  ?"),
        ("/* traceparent='00-abc' */ SELECT 1", " SELECT ?"),
        ("SELECT 1--x", "SELECT ?"),
        // Unterminated: everything after the opening is one ?.
        ("SELECT 'unterminated, 42", "SELECT ?"),
        ("SELECT E'x\\'", "SELECT ?"),
        ("SELECT \"unterminated", "SELECT ?"),
        ("SELECT $$unterminated 'x'", "SELECT ?"),
        ("SELECT $q$ a $$ b", "SELECT ?"),
        ("SELECT 1 /* unterminated 42", "SELECT ? "),
        ("SELECT 1 /* a /* b */ 42", "SELECT ? "),
        // Edges.
        ("", ""),
        ("?", "?"),
        ("$", "$"),
        ("'", "?"),
        ("0", "?"),
        ("SELECT 1.", "SELECT ?"),
        ("SELECT 1..2", "SELECT ?.?"),
        ("SELECT 123abc", "SELECT ?abc"),
        ("SELECT 1e", "SELECT ?e"),
    ] {
        assert_eq!(sanitize(input), want, "{input:?}");
    }
}

#[test]
fn operation_and_collection_table() {
    for (input, op, table) in [
        ("SELECT * FROM users", Some("SELECT"), Some("users")),
        (
            "select * from public.users where x = 1",
            Some("SELECT"),
            Some("public.users"),
        ),
        (
            "SELECT * FROM \"My Table\"",
            Some("SELECT"),
            Some("My Table"),
        ),
        (
            "SELECT * FROM public.\"Us\"\"ers\" u JOIN orders o ON o.u = u.id",
            Some("SELECT"),
            Some("public.Us\"ers"),
        ),
        (
            "SELECT a, b FROM t1, t2 WHERE t1.x = t2.x",
            Some("SELECT"),
            Some("t1"),
        ),
        ("SELECT 1", Some("SELECT"), None),
        ("SELECT * FROM generate_series(1, 3)", Some("SELECT"), None),
        ("SELECT * FROM (SELECT 1) s", Some("SELECT"), None),
        (
            "SELECT count(*), extract(year FROM ts), (SELECT max(x) FROM other) FROM events",
            Some("SELECT"),
            Some("events"),
        ),
        ("SELECT * FROM ONLY parent", Some("SELECT"), Some("parent")),
        ("SELECT * FROM LATERAL f(1)", Some("SELECT"), None),
        (
            "SELECT 'FROM x' AS a FROM real_t",
            Some("SELECT"),
            Some("real_t"),
        ),
        ("INSERT INTO t (a) VALUES (1)", Some("INSERT"), Some("t")),
        ("insert into s.t values (1)", Some("INSERT"), Some("s.t")),
        ("UPDATE ONLY t SET x = 1", Some("UPDATE"), Some("t")),
        ("UPDATE t SET x = 1", Some("UPDATE"), Some("t")),
        ("DELETE FROM t WHERE x = 1", Some("DELETE"), Some("t")),
        ("DELETE FROM ONLY t", Some("DELETE"), Some("t")),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            Some("MERGE"),
            Some("t"),
        ),
        ("COPY t (a, b) FROM STDIN", Some("COPY"), Some("t")),
        (
            "COPY  copy_items FROM STDIN ",
            Some("COPY"),
            Some("copy_items"),
        ),
        (
            "COPY \"ap_items\" TO STDOUT",
            Some("COPY"),
            Some("ap_items"),
        ),
        ("COPY (SELECT 1) TO STDOUT", Some("COPY"), None),
        (
            "CREATE TABLE IF NOT EXISTS s.t (id int)",
            Some("CREATE"),
            Some("s.t"),
        ),
        ("CREATE TEMP TABLE x (a int)", Some("CREATE"), Some("x")),
        ("CREATE UNLOGGED TABLE x (a int)", Some("CREATE"), Some("x")),
        (
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON ONLY t (a)",
            Some("CREATE"),
            Some("t"),
        ),
        ("CREATE VIEW v AS SELECT * FROM t", Some("CREATE"), None),
        ("DROP TABLE IF EXISTS t, u", Some("DROP"), Some("t")),
        ("DROP TABLE t", Some("DROP"), Some("t")),
        ("DROP INDEX i", Some("DROP"), None),
        ("TRUNCATE TABLE t", Some("TRUNCATE"), Some("t")),
        ("TRUNCATE ONLY t", Some("TRUNCATE"), Some("t")),
        (
            "ALTER TABLE IF EXISTS ONLY t ADD COLUMN x int",
            Some("ALTER"),
            Some("t"),
        ),
        ("ALTER TABLE t RENAME TO u", Some("ALTER"), Some("t")),
        ("ALTER ROLE r", Some("ALTER"), None),
        ("BEGIN", Some("BEGIN"), None),
        ("commit", Some("COMMIT"), None),
        ("ROLLBACK", Some("ROLLBACK"), None),
        ("START TRANSACTION", Some("START"), None),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Some("SELECT"), None),
        (
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            Some("INSERT"),
            Some("t"),
        ),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n+1 FROM r) SELECT * FROM r",
            Some("SELECT"),
            None,
        ),
        (
            "WITH a AS MATERIALIZED (SELECT 1), b AS NOT MATERIALIZED (SELECT 2) DELETE FROM t",
            Some("DELETE"),
            Some("t"),
        ),
        (
            "WITH x AS (SELECT 1) SELECT * FROM real_t, x",
            Some("SELECT"),
            Some("real_t"),
        ),
        ("WITH broken", Some("WITH"), None),
        ("WITH x AS (SELECT 1", Some("WITH"), None),
        (
            "  -- comment\n /* c */ ( SELECT * FROM t )",
            Some("SELECT"),
            Some("t"),
        ),
        ("SELECT * FROM t; DROP TABLE u", Some("SELECT"), Some("t")),
        ("EXPLAIN SELECT * FROM t", Some("EXPLAIN"), None),
        ("", None, None),
        ("   ", None, None),
        ("42", None, None),
        ("'str'", None, None),
        ("(((", None, None),
        ("SELECT * FROM", Some("SELECT"), None),
        ("INSERT", Some("INSERT"), None),
        ("UPDATE \"unterminated", Some("UPDATE"), None),
    ] {
        let got = operation_and_collection(input);
        assert_eq!(
            (got.0.as_deref(), got.1.as_deref()),
            (op, table),
            "{input:?}"
        );
    }
}

#[test]
fn deallocation_statements() {
    assert_eq!(
        deallocation("DEALLOCATE s1"),
        Some(Dealloc::Named("s1".into()))
    );
    assert_eq!(
        deallocation("deallocate prepare MyStmt"),
        Some(Dealloc::Named("mystmt".into()))
    );
    assert_eq!(
        deallocation("DEALLOCATE \"MyStmt\""),
        Some(Dealloc::Named("MyStmt".into()))
    );
    assert_eq!(deallocation("DEALLOCATE ALL"), Some(Dealloc::All));
    assert_eq!(deallocation("DEALLOCATE PREPARE ALL"), Some(Dealloc::All));
    assert_eq!(deallocation(" /* x */ DISCARD ALL"), Some(Dealloc::Discard));
    assert_eq!(deallocation("DISCARD PLANS"), None);
    assert_eq!(deallocation("SELECT 1"), None);
    assert_eq!(deallocation("DEALLOCATE"), None);
}

// ---- properties ----

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn word(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| ALNUM[rng.below(ALNUM.len())] as char)
        .collect()
}

fn digits(rng: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    s.push((b'1' + rng.below(9) as u8) as char);
    for _ in 1..n {
        s.push((b'0' + rng.below(10) as u8) as char);
    }
    s
}

/// A literal and the secret parts of it that must not survive sanitising.
fn literal(rng: &mut Rng) -> (String, Vec<String>) {
    match rng.below(12) {
        0 => {
            let n = 6 + rng.below(10);
            let d = digits(rng, n);
            (d.clone(), vec![d])
        }
        1 => {
            let (a, b) = (digits(rng, 6), digits(rng, 6));
            (format!("{a}.{b}"), vec![a, b])
        }
        2 => {
            let (a, e) = (digits(rng, 6), digits(rng, 2));
            (format!("{a}e-{e}"), vec![a])
        }
        3 => {
            let h = format!("{:x}", rng.next() | (1 << 40));
            (format!("0x{h}"), vec![h])
        }
        4 => {
            let (a, b) = (word(rng, 8), word(rng, 8));
            (format!("'{a}''{b}'"), vec![a, b])
        }
        5 => {
            let (a, b) = (word(rng, 8), word(rng, 8));
            (format!("E'{a}\\'{b}\\\\'"), vec![a, b])
        }
        6 => {
            let a = word(rng, 10);
            let tag = if rng.below(2) == 0 {
                String::new()
            } else {
                format!("t{}", rng.below(100))
            };
            (format!("${tag}${a} 'q' $x$ {a}${tag}$"), vec![a])
        }
        7 => {
            let bits: String = (0..16)
                .map(|_| if rng.below(2) == 0 { '0' } else { '1' })
                .collect();
            (format!("B'{bits}'"), vec![bits])
        }
        8 => {
            let h = format!("{:016x}", rng.next());
            (format!("X'{h}'"), vec![h])
        }
        9 => {
            let (a, b) = (digits(rng, 6), digits(rng, 7));
            (format!("'{{{a},{b}}}'"), vec![a, b])
        }
        10 => {
            let (a, b) = (digits(rng, 6), word(rng, 9));
            (format!("ARRAY[{a}, '{b}']"), vec![a, b])
        }
        _ => {
            let a = word(rng, 9);
            (format!("U&'{a}\\0041'"), vec![a])
        }
    }
}

/// A generated query, its secrets, and how many `$n` placeholders it has.
fn generated(rng: &mut Rng) -> (String, Vec<String>, usize) {
    const IDENTS: [&str; 8] = [
        "t1",
        "col_2",
        "\"My Table\"",
        "users",
        "a.b",
        "x",
        "s1.t2",
        "naïve",
    ];
    let mut sql = String::from(
        [
            "SELECT ",
            "select ",
            "INSERT INTO t VALUES (",
            "UPDATE t SET ",
        ][rng.below(4)],
    );
    let mut secrets = Vec::new();
    let mut params = 0;
    for i in 0..1 + rng.below(8) {
        if i > 0 {
            sql.push_str([", ", " + ", " AND ", " || ", ",", " = "][rng.below(6)]);
        }
        match rng.below(6) {
            0 => sql.push_str(IDENTS[rng.below(IDENTS.len())]),
            1 => {
                params += 1;
                sql.push_str(&format!("${params}"));
            }
            2 => {
                let s = word(rng, 10);
                if rng.below(2) == 0 {
                    sql.push_str(&format!("/* {s} */ "));
                } else {
                    sql.push_str(&format!("-- {s}\n"));
                }
                secrets.push(s);
                let (lit, mut sec) = literal(rng);
                sql.push_str(&lit);
                secrets.append(&mut sec);
            }
            _ => {
                let (lit, mut sec) = literal(rng);
                sql.push_str(&lit);
                secrets.append(&mut sec);
            }
        }
    }
    if rng.below(4) == 0 {
        sql.push_str(" WHERE id IN (");
        for k in 0..3 {
            if k > 0 {
                sql.push_str(", ");
            }
            let d = digits(rng, 7);
            sql.push_str(&d);
            secrets.push(d);
        }
        sql.push(')');
    }
    (sql, secrets, params)
}

#[test]
fn no_literal_value_survives_sanitising() {
    let mut rng = Rng(0x5a17_c0de_0000_0001);
    for round in 0..20_000 {
        let (sql, secrets, params) = generated(&mut rng);
        let out = sanitize(&sql);
        for s in &secrets {
            assert!(
                !out.contains(s.as_str()),
                "round {round}: {s:?} survived in {out:?} from {sql:?}"
            );
        }
        assert!(
            !out.contains('\''),
            "round {round}: quote in {out:?} from {sql:?}"
        );
        for p in 1..=params {
            assert!(
                out.contains(&format!("${p}")),
                "round {round}: ${p} lost in {out:?}"
            );
        }
        assert!(out.len() <= sql.len());
        assert_eq!(
            sanitize(&out),
            out,
            "round {round}: not idempotent on {sql:?}"
        );
    }
}

#[test]
fn sanitize_and_classify_any_text() {
    let mut rng = Rng(0xfeed_0000_1111_2222);
    const PIECES: [&str; 24] = [
        "'", "\"", "$", "$$", "$a$", "E'", "U&'", "U&\"", "--", "/*", "*/", "\\", "\n", " ", "0x",
        "1", ".", "e", "SELECT", "FROM", "(", ")", "é", "WITH",
    ];
    for _ in 0..50_000 {
        let mut s = String::new();
        for _ in 0..rng.below(12) {
            if rng.below(4) == 0 {
                let b: Vec<u8> = (0..rng.below(6)).map(|_| rng.next() as u8).collect();
                s.push_str(&String::from_utf8_lossy(&b));
            } else {
                s.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        let out = sanitize(&s);
        assert!(out.len() <= s.len(), "{s:?} -> {out:?}");
        let _ = operation_and_collection(&s);
        let _ = operation_and_collection(&out);
        let _ = deallocation(&s);
    }
}

#[test]
fn long_inputs_are_linear() {
    // Pathological nesting and many unterminated openers finish quickly.
    let s = "/*".repeat(100_000) + &"$a$".repeat(10_000) + &"'".repeat(10_001);
    let t = std::time::Instant::now();
    let out = sanitize(&s);
    assert!(out.len() <= s.len());
    let _ = operation_and_collection(&s);
    let deep = "(".repeat(200_000) + "SELECT 1 FROM t";
    assert_eq!(operation_and_collection(&deep).0.as_deref(), Some("SELECT"));
    assert!(t.elapsed().as_secs() < 10);
}

#[test]
fn statements_of_a_simple_query_text() {
    let pieces = |sql: &str| -> Vec<String> {
        statement_ranges(sql)
            .into_iter()
            .map(|r| sql[r].to_owned())
            .collect()
    };
    for (sql, want) in [
        ("SELECT 1", vec!["SELECT 1"]),
        ("  SELECT 1 ;  ", vec!["SELECT 1"]),
        (
            "BEGIN; INSERT INTO t VALUES (1);\nCOMMIT",
            vec!["BEGIN", "INSERT INTO t VALUES (1)", "COMMIT"],
        ),
        // Empty statements and comment-only pieces are skipped, as the server does.
        (";", vec![]),
        ("", vec![]),
        (";; SELECT 1;; -- done\n;", vec!["SELECT 1"]),
        (
            "/* a; b */ SELECT 1; SELECT 2",
            vec!["/* a; b */ SELECT 1", "SELECT 2"],
        ),
        // Semicolons inside strings, identifiers, dollar quotes and comments.
        (
            "INSERT INTO t VALUES ('a;b', E'c\\';d'); SELECT \"x;y\" FROM t",
            vec![
                "INSERT INTO t VALUES ('a;b', E'c\\';d')",
                "SELECT \"x;y\" FROM t",
            ],
        ),
        (
            "DO $body$BEGIN RAISE 'x'; END$body$; SELECT 1 -- ;\n",
            vec!["DO $body$BEGIN RAISE 'x'; END$body$", "SELECT 1 -- ;"],
        ),
        // A SQL-standard function body is one statement with inner semicolons: not split.
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT f()",
            vec![
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT f()",
            ],
        ),
        // Unterminated string: runs to the end, one statement.
        ("SELECT 'a; SELECT 2", vec!["SELECT 'a; SELECT 2"]),
        // Semicolons inside parentheses belong to the statement.
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1",
            vec![
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                "SELECT 1",
            ],
        ),
        // Non-ASCII spaces are not the lexer's whitespace: kept, never an inverted range.
        ("\u{3000};SELECT 1", vec!["\u{3000}", "SELECT 1"]),
        ("\u{a0}\u{a0}; \u{a0}", vec!["\u{a0}\u{a0}", "\u{a0}"]),
    ] {
        assert_eq!(pieces(sql), want, "{sql:?}");
    }
}

#[test]
fn statement_ranges_never_panic_and_stay_in_bounds() {
    let mut rng = Rng(0x5717_0000_0000_0007);
    let alphabet: &[&str] = &[
        ";", "'", "\"", "$$", "$a$", "--", "\n", "/*", "*/", "E'", "\\", " ", "SELECT", "é",
        "BEGIN", "ATOMIC", "x", "(", ")", "\u{3000}", "\u{a0}", "\u{b}",
    ];
    for _ in 0..20_000 {
        let n = rng.below(12);
        let sql: String = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let mut last = 0;
        for r in statement_ranges(&sql) {
            assert!(
                r.start >= last && r.start < r.end && r.end <= sql.len(),
                "{sql:?}"
            );
            let piece = &sql[r.clone()];
            let lexer_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}');
            assert_eq!(piece, piece.trim_matches(lexer_space), "{sql:?}");
            assert!(!piece.is_empty(), "{sql:?}");
            last = r.end;
        }
    }
}
