//! The MySQL sanitizer: no literal survives, whatever the quoting.

use super::super::{operation_and_collection, sanitize};

#[test]
fn literals_become_placeholders() {
    let cases = [
        (
            "INSERT INTO users VALUES (1, 'alice-secret-1', 4242.5), (2, \"bob\", 7)",
            "INSERT INTO users VALUES (?, ?, ?), (?, ?, ?)",
        ),
        (
            r"INSERT INTO t VALUES (1, 'it\'s \\ secret')",
            "INSERT INTO t VALUES (?, ?)",
        ),
        (r#"SELECT "a\"b" , 'x''y'"#, "SELECT ? , ?"),
        (
            "SELECT * FROM `my``table` WHERE `a` = -1.5e3",
            "SELECT * FROM `my``table` WHERE `a` = -?",
        ),
        (
            "SELECT X'DEADBEEF', x'00', 0x1F, b'101', 0b11, N'nat'",
            "SELECT ?, ?, ?, ?, ?, ?",
        ),
        (
            "SELECT _utf8mb4'secret' COLLATE utf8mb4_bin",
            "SELECT _utf8mb4? COLLATE utf8mb4_bin",
        ),
        ("SELECT 1 # secret comment\nFROM t", "SELECT ? \nFROM t"),
        ("SELECT 1 -- secret\nFROM t", "SELECT ? \nFROM t"),
        ("SELECT 1--2", "SELECT ?--?"),
        (
            "SELECT /*! STRAIGHT_JOIN 'x' */ a FROM t",
            "SELECT  a FROM t",
        ),
        ("SELECT a/*c*/FROM t", "SELECT a FROM t"),
        (
            "SELECT * FROM t WHERE id = ? AND v = ?",
            "SELECT * FROM t WHERE id = ? AND v = ?",
        ),
        (
            "SELECT @x := 5, @@session.sql_mode",
            "SELECT @x := ?, @@session.sql_mode",
        ),
        ("SELECT 'unterminated secret", "SELECT ?"),
        ("SELECT \"unterminated secret", "SELECT ?"),
        ("SELECT `unterminated secret", "SELECT ?"),
        ("SELECT 1 /* unterminated secret", "SELECT ? "),
        ("SELECT * FROM 1st_table", "SELECT * FROM 1st_table"),
        ("SELECT 12abc", "SELECT 12abc"),
        ("SELECT 1.5abc", "SELECT ?"),
        ("SELECT .5, 5., 1e-3", "SELECT ?, ?, ?"),
        ("SELECT 'é', \"日本\" FROM été", "SELECT ?, ? FROM été"),
    ];
    for (sql, want) in cases {
        assert_eq!(sanitize(sql), want, "{sql}");
    }
}

#[test]
fn operation_and_table() {
    let cases = [
        (
            "SELECT name FROM users WHERE id = 1",
            Some("SELECT"),
            Some("users"),
        ),
        (
            "select * from `My Table` where a = \"x\"",
            Some("SELECT"),
            Some("My Table"),
        ),
        (
            "INSERT INTO `shop`.`users` VALUES (1)",
            Some("INSERT"),
            Some("shop.users"),
        ),
        (
            "UPDATE t SET v = 'a;b' WHERE id = 2",
            Some("UPDATE"),
            Some("t"),
        ),
        (
            "DELETE FROM t WHERE v = \"FROM other\"",
            Some("DELETE"),
            Some("t"),
        ),
        (
            "CREATE TABLE IF NOT EXISTS p (id INT)",
            Some("CREATE"),
            Some("p"),
        ),
        ("DROP TABLE IF EXISTS users", Some("DROP"), Some("users")),
        ("# c\nSELECT 1", Some("SELECT"), None),
        ("SET NAMES utf8mb4", Some("SET"), None),
        ("'just a string'", None, None),
    ];
    for (sql, op, table) in cases {
        let (o, t) = operation_and_collection(sql);
        assert_eq!((o.as_deref(), t.as_deref()), (op, table), "{sql}");
    }
}

/// Random texts made of complete tokens (strings with escapes and doubled quotes, quoted
/// identifiers, comments, numbers, words), then a secret inside a literal or comment: the
/// secret never survives.
#[test]
fn no_secret_survives_random_mixes() {
    let pieces = [
        "'a'",
        "\"b\"",
        "`c`",
        "`d``e`",
        "# x\n",
        "/* y */",
        "-- z\n",
        r"'it\'s'",
        r#""q\"q""#,
        "'x''y'",
        "\"u\"\"v\"",
        "0x1F",
        "1.5e3",
        "@v",
        " ",
        "\n",
        ";",
        "(",
        ")",
        "é",
        "SELECT",
        "a--b",
        "1-- \n",
        "X'00'",
        "_utf8'k'",
        r"'\\'",
    ];
    let mut rng = super::Rng(7);
    for _ in 0..20_000 {
        let mut prefix = String::new();
        for _ in 0..rng.below(12) {
            prefix.push_str(pieces[rng.below(pieces.len())]);
            prefix.push(' ');
        }
        for secret in [
            "'SECRET'",
            "\"SECRET\"",
            r"'a\'SECRET'",
            r#""a\"SECRET""#,
            "'a''SECRET'",
            "# SECRET\n",
            "/* SECRET */",
            "/*! SECRET */",
            "-- SECRET\n",
            "X'SECRET'",
            "'SECRET",
        ] {
            let sql = format!("{prefix}{secret} rest");
            let out = sanitize(&sql);
            assert!(!out.contains("SECRET"), "{sql:?} -> {out:?}");
            assert!(out.len() <= sql.len());
        }
    }
}
