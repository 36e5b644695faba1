//! Hand-written tests, one behaviour each.

use super::super::{Detect, MAX_PENDING, MAX_PREPARED, PgStats, detect_frontend};
use super::*;

/// A clean connection: startup and its reply.
fn hello() -> Vec<Event> {
    vec![
        fe(1, &startup(&[("user", "alice"), ("database", "shop")])),
        be(2, &startup_reply()),
    ]
}

fn with_hello(rest: &[Event]) -> Vec<Event> {
    let mut v = hello();
    v.extend_from_slice(rest);
    v
}

fn run(events: &[Event]) -> (Vec<Statement>, PgStats) {
    let (xs, conn) = replay(events);
    (xs, conn.stats())
}

fn texts(xs: &[Statement]) -> Vec<Option<&str>> {
    xs.iter().map(|s| s.query.as_deref()).collect()
}

fn tags(xs: &[Statement]) -> Vec<Option<&str>> {
    xs.iter().map(|s| s.command_tag.as_deref()).collect()
}

fn times(xs: &[Statement]) -> Vec<(u64, u64)> {
    xs.iter().map(|s| (s.start_ns, s.end_ns)).collect()
}

fn sqlstates(xs: &[Statement]) -> Vec<Option<&str>> {
    xs.iter()
        .map(|s| s.error.as_ref().map(|e| e.sqlstate.as_str()))
        .collect()
}

fn partials(xs: &[Statement]) -> Vec<bool> {
    xs.iter().map(|s| s.partial).collect()
}

// ---- simple query ----

#[test]
fn simple_query_fields_and_timestamps() {
    let mut conn = PgConn::new();
    conn.push_frontend(seg(
        10,
        &startup(&[("user", "alice"), ("database", "shop")]),
    ));
    conn.push_backend(seg(11, &startup_reply()));
    assert_eq!(conn.user(), Some("alice"));
    assert_eq!(conn.database(), Some("shop"));
    conn.push_frontend(seg(20, &query("SELECT id FROM t")));
    conn.push_backend(seg(30, &cat(&[&row_desc(&["id"]), &data_row(&[b"1"])])));
    assert!(conn.take_statements().is_empty(), "not complete yet");
    conn.push_backend(seg(40, &cat(&[&data_row(&[b"2"]), &complete("SELECT 2")])));
    let xs = conn.take_statements();
    assert_eq!(
        xs.len(),
        1,
        "emitted at CommandComplete, before ReadyForQuery"
    );
    conn.push_backend(seg(50, &ready(b'I')));
    assert!(conn.take_statements().is_empty());
    let s = &xs[0];
    assert_eq!(s.query.as_deref(), Some("SELECT id FROM t"));
    assert_eq!(s.prepared_name, None);
    assert!(!s.extended);
    assert_eq!((s.start_ns, s.end_ns), (20, 40));
    assert_eq!(s.command_tag.as_deref(), Some("SELECT 2"));
    assert_eq!(s.rows, Some(2));
    assert_eq!(s.error, None);
    assert!(!s.partial);
    assert_eq!(conn.stats(), PgStats::default());
    assert!(!conn.encrypted());
}

#[test]
fn database_defaults_to_user() {
    let mut conn = PgConn::new();
    conn.push_frontend(seg(1, &startup(&[("user", "bob")])));
    assert_eq!(conn.database(), Some("bob"));
    assert_eq!(conn.user(), Some("bob"));
    let conn = PgConn::new();
    assert_eq!((conn.database(), conn.user()), (None, None));
}

#[test]
fn returned_rows_from_every_tag_kind() {
    // (tag, rows returned without rows sent, with rows sent before the tag)
    for (tag, plain, with_rows) in [
        // A SELECT-tagged statement that sent no rows wrote them: CREATE TABLE AS, SELECT INTO.
        ("SELECT 5", None, Some(5)),
        ("SELECT 0", Some(0), Some(0)),
        ("FETCH 100", None, Some(100)),
        ("FETCH 0", Some(0), Some(0)),
        // Written rows are not returned rows, unless RETURNING / TO STDOUT sent them.
        ("INSERT 0 1", None, Some(1)),
        ("INSERT 0 250", None, Some(250)),
        ("UPDATE 7", None, Some(7)),
        ("DELETE 0", None, Some(0)),
        ("MERGE 3", None, Some(3)),
        ("COPY 3", None, Some(3)),
        ("MOVE 9", None, None),
        ("BEGIN", None, None),
        ("CREATE TABLE", None, None),
        ("SELECT", None, None),
        ("SELECT x", None, None),
        ("INSERT 0", None, None),
        ("SELECT 99999999999999999999999", None, None),
    ] {
        let (xs, _) = run(&with_hello(&[
            fe(3, &query("X")),
            be(4, &cat(&[&complete(tag), &ready(b'I')])),
        ]));
        assert_eq!(xs[0].command_tag.as_deref(), Some(tag));
        assert_eq!(xs[0].rows, plain, "{tag}");
        // Simple protocol: rows (or a COPY TO STDOUT) before the tag.
        let sent = if tag.starts_with("COPY") {
            cat(&[&copy_response(b'H', 1), &copy_data(b"1\n"), &copy_done()])
        } else {
            data_row(&[b"1"])
        };
        let (xs, _) = run(&with_hello(&[
            fe(3, &query("X")),
            be(4, &cat(&[&sent, &complete(tag), &ready(b'I')])),
        ]));
        assert_eq!(xs[0].rows, with_rows, "{tag} after rows");
        // Extended protocol: DataRows answer the Execute.
        let (xs, _) = run(&with_hello(&[
            fe(
                3,
                &cat(&[
                    &parse("", "X"),
                    &bind("", "", &[]),
                    &execute("", 0),
                    &sync(),
                ]),
            ),
            be(
                4,
                &cat(&[
                    &parse_complete(),
                    &bind_complete(),
                    &sent,
                    &complete(tag),
                    &ready(b'I'),
                ]),
            ),
        ]));
        assert_eq!(xs[0].rows, with_rows, "{tag} extended, after rows");
    }
}

#[test]
fn rows_sent_for_one_statement_of_a_query_do_not_count_for_the_next() {
    let q = "SELECT 1; INSERT INTO t VALUES (1); INSERT INTO t VALUES (2) RETURNING id";
    let (xs, _) = run(&with_hello(&[
        fe(10, &query(q)),
        be(
            20,
            &cat(&[
                &row_desc(&["?column?"]),
                &data_row(&[b"1"]),
                &complete("SELECT 1"),
                &complete("INSERT 0 1"),
                &row_desc(&["id"]),
                &data_row(&[b"2"]),
                &complete("INSERT 0 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    let rows: Vec<Option<u64>> = xs.iter().map(|s| s.rows).collect();
    assert_eq!(rows, [Some(1), None, Some(1)]);
}

#[test]
fn multi_statement_query_gives_one_statement_per_command_with_sequential_timings() {
    let q = "BEGIN; INSERT INTO t VALUES (1); COMMIT";
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query(q)),
        be(20, &complete("BEGIN")),
        be(30, &complete("INSERT 0 1")),
        be(40, &cat(&[&complete("COMMIT"), &ready(b'I')])),
    ]));
    // Each result carries its own statement of the text.
    assert_eq!(
        texts(&xs),
        [
            Some("BEGIN"),
            Some("INSERT INTO t VALUES (1)"),
            Some("COMMIT")
        ]
    );
    assert_eq!(
        tags(&xs),
        [Some("BEGIN"), Some("INSERT 0 1"), Some("COMMIT")]
    );
    assert_eq!(times(&xs), [(10, 20), (20, 30), (30, 40)]);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn a_cut_multi_statement_text_names_only_the_statements_it_holds() {
    let q = "BEGIN; INSERT INTO t VALUES (1); COMMIT";
    let msg = query(q);
    // The capture ends inside the INSERT: the third result's statement is unknown.
    let (xs, _) = run(&with_hello(&[
        Event {
            to: To::Server,
            seg: cut(10, &msg[..5 + 20], msg.len() as u64),
        },
        be(20, &complete("BEGIN")),
        be(30, &complete("INSERT 0 1")),
        be(40, &cat(&[&complete("COMMIT"), &ready(b'I')])),
    ]));
    assert_eq!(texts(&xs), [Some("BEGIN"), Some("INSERT INTO t"), None]);
    assert!(partials(&xs).iter().all(|&p| p), "{xs:?}");
}

#[test]
fn error_ends_a_simple_query() {
    let q = "BEGIN; INSERT INTO t VALUES (1); COMMIT";
    let (xs, _) = run(&with_hello(&[
        fe(10, &query(q)),
        be(
            20,
            &cat(&[
                &complete("BEGIN"),
                &error("23505", "duplicate key"),
                &ready(b'E'),
            ]),
        ),
        fe(30, &query("ROLLBACK")),
        be(40, &cat(&[&complete("ROLLBACK"), &ready(b'I')])),
    ]));
    assert_eq!(
        texts(&xs),
        [
            Some("BEGIN"),
            Some("INSERT INTO t VALUES (1)"),
            Some("ROLLBACK")
        ]
    );
    assert_eq!(sqlstates(&xs), [None, Some("23505"), None]);
    let e = xs[1].error.as_ref().unwrap();
    assert_eq!(
        (e.severity.as_str(), e.message.as_str()),
        ("ERROR", "duplicate key")
    );
    assert_eq!((xs[1].command_tag.as_deref(), xs[1].rows), (None, None));
    assert!(partials(&xs).iter().all(|p| !p));
}

#[test]
fn error_fields_prefer_the_non_localized_severity() {
    let mut body = Vec::new();
    for (t, v) in [
        (b'S', "FEHLER"),
        (b'V', "ERROR"),
        (b'C', "42P01"),
        (b'M', "Relation existiert nicht"),
        (b'P', "15"),
    ] {
        body.push(t);
        body.extend(cstr(v));
    }
    body.push(0);
    let (xs, _) = run(&with_hello(&[
        fe(3, &query("SELECT * FROM nope")),
        be(4, &cat(&[&msg(b'E', &body), &ready(b'I')])),
    ]));
    assert_eq!(
        xs[0].error,
        Some(super::super::PgError {
            severity: "ERROR".into(),
            sqlstate: "42P01".into(),
            message: "Relation existiert nicht".into(),
        })
    );
    // Pre-9.6 servers send only S.
    let mut old = Vec::new();
    for (t, v) in [(b'S', "FATAL"), (b'C', "57P01"), (b'M', "terminating")] {
        old.push(t);
        old.extend(cstr(v));
    }
    old.push(0);
    let (xs, _) = run(&with_hello(&[
        fe(3, &query("SELECT pg_sleep(9)")),
        be(4, &msg(b'E', &old)),
    ]));
    assert_eq!(xs[0].error.as_ref().unwrap().severity, "FATAL");
}

#[test]
fn empty_query_response_is_a_statement_without_tag() {
    let (xs, stats) = run(&with_hello(&[
        fe(3, &query("")),
        be(4, &cat(&[&empty_query(), &ready(b'I')])),
    ]));
    assert_eq!(texts(&xs), [Some("")]);
    assert_eq!(tags(&xs), [None]);
    assert!(!xs[0].partial);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn asynchronous_messages_are_ignored_anywhere() {
    let (xs, stats) = run(&with_hello(&[
        fe(3, &query("SET x = 1; SELECT 1")),
        be(
            4,
            &cat(&[
                &notice("hello"),
                &complete("SET"),
                &param_status("x", "1"),
                &msg(
                    b'A',
                    &cat(&[&7u32.to_be_bytes(), &cstr("chan"), &cstr("payload")]),
                ),
                &row_desc(&["a"]),
                &notice("in the middle of rows"),
                &data_row(&[b"1"]),
                &complete("SELECT 1"),
                &ready(b'I'),
                &notice("idle"),
            ]),
        ),
    ]));
    assert_eq!(tags(&xs), [Some("SET"), Some("SELECT 1")]);
    assert_eq!(stats, PgStats::default());
}

// ---- COPY ----

#[test]
fn copy_from_stdin_is_one_statement() {
    let q = "COPY t FROM STDIN";
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query(q)),
        be(11, &copy_response(b'G', 2)),
        fe(12, &copy_data(b"1\ta\n")),
        fe(
            13,
            &cat(&[&copy_data(b"2\tb\n"), &copy_data(b"3\tc\n"), &copy_done()]),
        ),
        be(14, &cat(&[&complete("COPY 3"), &ready(b'I')])),
    ]));
    assert_eq!(texts(&xs), [Some(q)]);
    // Rows copied in are not returned rows.
    assert_eq!((tags(&xs), xs[0].rows), (vec![Some("COPY 3")], None));
    assert_eq!(times(&xs), [(10, 14)]);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn copy_to_stdout_is_one_statement() {
    let q = "COPY t TO STDOUT";
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query(q)),
        be(11, &cat(&[&copy_response(b'H', 1), &copy_data(b"1\n")])),
        be(12, &cat(&[&copy_data(b"2\n"), &copy_done()])),
        be(13, &cat(&[&complete("COPY 2"), &ready(b'I')])),
    ]));
    assert_eq!(tags(&xs), [Some("COPY 2")]);
    assert_eq!(times(&xs), [(10, 13)]);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn copy_fail_gives_an_error_statement() {
    let (xs, _) = run(&with_hello(&[
        fe(10, &query("COPY t FROM STDIN")),
        be(11, &copy_response(b'G', 1)),
        fe(
            12,
            &cat(&[&copy_data(b"1\n"), &msg(b'f', &cstr("client gave up"))]),
        ),
        be(
            13,
            &cat(&[&error("57014", "COPY from stdin failed"), &ready(b'I')]),
        ),
        fe(14, &query("SELECT 1")),
        be(15, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(sqlstates(&xs), [Some("57014"), None]);
    assert_eq!(texts(&xs)[1], Some("SELECT 1"));
}

#[test]
fn copy_in_extended_mode() {
    let q = "COPY t FROM STDIN";
    let (xs, stats) = run(&with_hello(&[
        fe(
            10,
            &cat(&[&parse("", q), &bind("", "", &[]), &execute("", 0), &flush()]),
        ),
        be(
            11,
            &cat(&[&parse_complete(), &bind_complete(), &copy_response(b'G', 1)]),
        ),
        fe(12, &cat(&[&copy_data(b"1\n"), &copy_done(), &sync()])),
        be(13, &cat(&[&complete("COPY 1"), &ready(b'I')])),
    ]));
    assert_eq!(
        (texts(&xs), tags(&xs)),
        (vec![Some(q)], vec![Some("COPY 1")])
    );
    assert!(xs[0].extended);
    assert_eq!(stats, PgStats::default());
}

// ---- extended query ----

#[test]
fn extended_unnamed_statement() {
    let q = "SELECT * FROM t WHERE id = $1";
    let (xs, stats) = run(&with_hello(&[
        fe(10, &cat(&[&parse("", q), &flush()])),
        be(11, &parse_complete()),
        fe(
            12,
            &cat(&[
                &bind("", "", &[b"7"]),
                &describe(b'P', ""),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            13,
            &cat(&[&bind_complete(), &row_desc(&["id"]), &data_row(&[b"7"])]),
        ),
        be(14, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(xs.len(), 1);
    let s = &xs[0];
    assert_eq!(s.query.as_deref(), Some(q));
    assert_eq!(s.prepared_name.as_deref(), Some(""));
    assert!(s.extended);
    assert_eq!(
        (s.start_ns, s.end_ns),
        (10, 14),
        "from the Parse to CommandComplete"
    );
    assert_eq!(
        (s.command_tag.as_deref(), s.rows),
        (Some("SELECT 1"), Some(1))
    );
    assert!(!s.partial);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn pg8000_style_round_trips_start_at_the_parse() {
    // Parse+Sync, Describe+Sync, Bind+Execute+Sync: one execution, three round trips.
    let q = "SELECT $1::int";
    let (xs, _) = run(&with_hello(&[
        fe(10, &cat(&[&parse("", q), &flush(), &sync()])),
        be(11, &cat(&[&parse_complete(), &ready(b'I')])),
        fe(12, &cat(&[&describe(b'S', ""), &flush(), &sync()])),
        be(
            13,
            &cat(&[&param_desc(1), &row_desc(&["int4"]), &ready(b'I')]),
        ),
        fe(
            14,
            &cat(&[
                &bind("", "", &[b"1"]),
                &flush(),
                &execute("", 0),
                &flush(),
                &sync(),
            ]),
        ),
        be(
            15,
            &cat(&[
                &bind_complete(),
                &data_row(&[b"1"]),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some(q)]);
    assert_eq!(times(&xs), [(10, 15)]);
}

#[test]
fn named_statement_reused_many_times_carries_its_text_every_time() {
    let q = "UPDATE t SET n = n + 1 WHERE id = $1";
    let mut events = with_hello(&[
        fe(10, &cat(&[&parse("s1", q), &describe(b'S', "s1"), &sync()])),
        be(
            11,
            &cat(&[&parse_complete(), &param_desc(1), &no_data(), &ready(b'I')]),
        ),
    ]);
    for i in 0..5u64 {
        let ts = 20 + 10 * i;
        events.push(fe(
            ts,
            &cat(&[&bind("", "s1", &[b"1"]), &execute("", 0), &sync()]),
        ));
        events.push(be(
            ts + 5,
            &cat(&[&bind_complete(), &complete("UPDATE 1"), &ready(b'I')]),
        ));
    }
    let (xs, stats) = run(&events);
    assert_eq!(texts(&xs), [Some(q); 5]);
    assert!(xs.iter().all(|s| s.prepared_name.as_deref() == Some("s1")));
    assert_eq!(
        times(&xs),
        [(10, 25), (30, 35), (40, 45), (50, 55), (60, 65)],
        "the first execution includes its Parse, the others start at their Bind"
    );
    assert_eq!(stats, PgStats::default());
}

#[test]
fn unnamed_statement_is_replaced_by_each_parse() {
    let mut events = hello();
    for (i, q) in ["SELECT 1", "SELECT 2", "SELECT 3"].iter().enumerate() {
        let ts = 10 + 10 * i as u64;
        events.push(fe(
            ts,
            &cat(&[&parse("", q), &bind("", "", &[]), &execute("", 0), &sync()]),
        ));
        events.push(be(
            ts + 1,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ));
    }
    // Executed again without a new Parse: still the last one.
    events.push(fe(
        50,
        &cat(&[&bind("", "", &[]), &execute("", 0), &sync()]),
    ));
    events.push(be(
        51,
        &cat(&[&bind_complete(), &complete("SELECT 1"), &ready(b'I')]),
    ));
    let (xs, _) = run(&events);
    assert_eq!(
        texts(&xs),
        [
            Some("SELECT 1"),
            Some("SELECT 2"),
            Some("SELECT 3"),
            Some("SELECT 3")
        ]
    );
}

#[test]
fn named_statement_redefinition_is_refused_and_the_first_text_kept() {
    let (xs, _) = run(&with_hello(&[
        fe(10, &cat(&[&parse("s", "SELECT 'first'"), &sync()])),
        be(11, &cat(&[&parse_complete(), &ready(b'I')])),
        fe(12, &cat(&[&parse("s", "SELECT 'second'"), &sync()])),
        be(
            13,
            &cat(&[
                &error("42P05", "prepared statement \"s\" already exists"),
                &ready(b'I'),
            ]),
        ),
        fe(14, &cat(&[&bind("", "s", &[]), &execute("", 0), &sync()])),
        be(
            15,
            &cat(&[&bind_complete(), &complete("SELECT 1"), &ready(b'I')]),
        ),
    ]));
    // The refused Parse is reported (as the error it is), then the execution of the first.
    assert_eq!(
        texts(&xs),
        [Some("SELECT 'second'"), Some("SELECT 'first'")]
    );
    assert_eq!(sqlstates(&xs), [Some("42P05"), None]);
}

#[test]
fn redefinition_after_an_unseen_close_takes_the_new_text() {
    // The client closed "s" in bytes we did not see (here: a Close whose name a gap cut), so
    // the server accepts the new definition and runs it.
    let close = close_stmt("s");
    let (xs, _) = run(&with_hello(&[
        fe(10, &cat(&[&parse("s", "SELECT 'old'"), &sync()])),
        be(11, &cat(&[&parse_complete(), &ready(b'I')])),
        Event {
            to: To::Server,
            seg: cut(12, &close[..6], close.len() as u64),
        },
        fe(13, &sync()),
        be(14, &cat(&[&close_complete(), &ready(b'I')])),
        fe(
            15,
            &cat(&[
                &parse("s", "SELECT 'new'"),
                &bind("", "s", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            16,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some("SELECT 'new'")]);
}

#[test]
fn close_forgets_a_named_statement() {
    let (xs, _) = run(&with_hello(&[
        fe(10, &cat(&[&parse("s", "SELECT 'old'"), &sync()])),
        be(11, &cat(&[&parse_complete(), &ready(b'I')])),
        fe(12, &cat(&[&close_stmt("s"), &sync()])),
        be(13, &cat(&[&close_complete(), &ready(b'I')])),
        fe(
            14,
            &cat(&[
                &parse("s", "SELECT 'new'"),
                &bind("", "s", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            15,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some("SELECT 'new'")]);
}

#[test]
fn deallocate_and_discard_in_sql_forget_statements() {
    for sql in [
        "DEALLOCATE s",
        "deallocate prepare S",
        "DEALLOCATE ALL",
        "DISCARD ALL",
    ] {
        let (xs, _) = run(&with_hello(&[
            fe(10, &cat(&[&parse("s", "SELECT 'old'"), &sync()])),
            be(11, &cat(&[&parse_complete(), &ready(b'I')])),
            fe(12, &query(sql)),
            be(13, &cat(&[&complete("DEALLOCATE"), &ready(b'I')])),
            fe(
                14,
                &cat(&[
                    &parse("s", "SELECT 'new'"),
                    &bind("", "s", &[]),
                    &execute("", 0),
                    &sync(),
                ]),
            ),
            be(
                15,
                &cat(&[
                    &parse_complete(),
                    &bind_complete(),
                    &complete("SELECT 1"),
                    &ready(b'I'),
                ]),
            ),
        ]));
        assert_eq!(texts(&xs), [Some(sql), Some("SELECT 'new'")], "{sql}");
    }
}

#[test]
fn statement_prepared_before_the_capture_has_no_text() {
    let (xs, stats) = run(&with_hello(&[
        fe(
            10,
            &cat(&[&bind("", "pre_existing", &[b"1"]), &execute("", 0), &sync()]),
        ),
        be(
            11,
            &cat(&[&bind_complete(), &complete("DELETE 1"), &ready(b'I')]),
        ),
    ]));
    assert_eq!(xs.len(), 1);
    assert_eq!(xs[0].query, None);
    assert_eq!(xs[0].prepared_name.as_deref(), Some("pre_existing"));
    assert_eq!(xs[0].command_tag.as_deref(), Some("DELETE 1"));
    assert!(!xs[0].partial);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn execute_of_an_unknown_portal() {
    let (xs, _) = run(&with_hello(&[
        fe(10, &cat(&[&execute("cursor_1", 0), &sync()])),
        be(11, &cat(&[&complete("FETCH 0"), &ready(b'I')])),
    ]));
    assert_eq!(
        (xs[0].query.as_deref(), xs[0].prepared_name.as_deref()),
        (None, None)
    );
    assert!(xs[0].extended);
}

#[test]
fn pipelined_batch_each_execute_is_its_own_statement() {
    let (xs, stats) = run(&with_hello(&[
        fe(
            10,
            &cat(&[
                &parse("", "INSERT INTO t VALUES (1)"),
                &bind("", "", &[]),
                &execute("", 0),
                &parse("", "INSERT INTO t VALUES (2)"),
                &bind("", "", &[]),
                &execute("", 0),
            ]),
        ),
        fe(
            11,
            &cat(&[
                &parse("", "UPDATE t SET x = 1"),
                &bind("", "", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            20,
            &cat(&[&parse_complete(), &bind_complete(), &complete("INSERT 0 1")]),
        ),
        be(
            30,
            &cat(&[&parse_complete(), &bind_complete(), &complete("INSERT 0 1")]),
        ),
        be(
            40,
            &cat(&[&parse_complete(), &bind_complete(), &complete("UPDATE 2")]),
        ),
        be(50, &ready(b'I')),
    ]));
    assert_eq!(
        texts(&xs),
        [
            Some("INSERT INTO t VALUES (1)"),
            Some("INSERT INTO t VALUES (2)"),
            Some("UPDATE t SET x = 1")
        ]
    );
    assert_eq!(times(&xs), [(10, 20), (10, 30), (11, 40)]);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn error_mid_pipeline_skips_to_sync_and_shifts_nothing() {
    let ins = "INSERT INTO t VALUES ($1)";
    let mut batch = parse("ins", ins);
    for v in [b"1", b"2", b"3", b"4", b"5"] {
        batch.extend(bind("", "ins", &[v]));
        batch.extend(execute("", 0));
    }
    batch.extend(sync());
    let (xs, stats) = run(&with_hello(&[
        fe(10, &batch),
        be(
            20,
            &cat(&[&parse_complete(), &bind_complete(), &complete("INSERT 0 1")]),
        ),
        be(30, &cat(&[&bind_complete(), &complete("INSERT 0 1")])),
        be(
            40,
            &cat(&[
                &bind_complete(),
                &error("23505", "duplicate key"),
                &ready(b'E'),
            ]),
        ),
        // The next batch: its statement must not take the skipped Executes' place.
        fe(
            50,
            &cat(&[
                &parse("", "SELECT count(*) FROM t"),
                &bind("", "", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            60,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &data_row(&[b"2"]),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(
        texts(&xs),
        [
            Some(ins),
            Some(ins),
            Some(ins),
            Some("SELECT count(*) FROM t")
        ]
    );
    assert_eq!(sqlstates(&xs), [None, None, Some("23505"), None]);
    assert_eq!(
        tags(&xs),
        [
            Some("INSERT 0 1"),
            Some("INSERT 0 1"),
            None,
            Some("SELECT 1")
        ]
    );
    assert_eq!(times(&xs), [(10, 20), (10, 30), (10, 40), (50, 60)]);
    assert_eq!(partials(&xs), [false; 4]);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn many_syncs_before_any_response() {
    let mut fr = Vec::new();
    for q in ["SELECT 'a'", "SELECT 'b'", "SELECT 'c'"] {
        fr.extend(parse("", q));
        fr.extend(bind("", "", &[]));
        fr.extend(execute("", 0));
        fr.extend(sync());
    }
    let ok = |ts| {
        be(
            ts,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        )
    };
    let (xs, _) = run(&with_hello(&[
        fe(10, &fr),
        ok(20),
        // The second batch fails at Bind: its Execute is reported with the error; the third
        // batch (after the Sync) runs normally.
        be(
            30,
            &cat(&[
                &parse_complete(),
                &error("22P02", "invalid input"),
                &ready(b'I'),
            ]),
        ),
        ok(40),
    ]));
    assert_eq!(
        texts(&xs),
        [Some("SELECT 'a'"), Some("SELECT 'b'"), Some("SELECT 'c'")]
    );
    assert_eq!(sqlstates(&xs), [None, Some("22P02"), None]);
    assert_eq!(times(&xs), [(10, 20), (10, 30), (10, 40)]);
    assert!(xs.iter().all(|s| !s.partial));
}

#[test]
fn parse_error_is_reported_on_the_execute_it_prevented() {
    let (xs, _) = run(&with_hello(&[
        fe(
            10,
            &cat(&[
                &parse("", "SELEC 1"),
                &bind("", "", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(11, &cat(&[&error("42601", "syntax error"), &ready(b'I')])),
        fe(
            12,
            &cat(&[
                &parse("", "SELECT 1"),
                &bind("", "", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            13,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some("SELEC 1"), Some("SELECT 1")]);
    assert_eq!(sqlstates(&xs), [Some("42601"), None]);
    assert_eq!(times(&xs), [(10, 11), (12, 13)]);
}

#[test]
fn parse_only_and_describe_only_batches_give_nothing() {
    let (xs, stats) = run(&with_hello(&[
        fe(
            10,
            &cat(&[&parse("s", "SELECT $1"), &describe(b'S', "s"), &sync()]),
        ),
        be(
            11,
            &cat(&[
                &parse_complete(),
                &param_desc(1),
                &row_desc(&["x"]),
                &ready(b'I'),
            ]),
        ),
        fe(12, &cat(&[&describe(b'S', "s"), &sync()])),
        be(13, &cat(&[&param_desc(1), &row_desc(&["x"]), &ready(b'I')])),
    ]));
    assert!(xs.is_empty(), "{xs:?}");
    assert_eq!(stats, PgStats::default());
}

#[test]
fn failed_parse_only_batch_reports_its_error() {
    let (xs, _) = run(&with_hello(&[
        fe(
            10,
            &cat(&[&parse("s", "SELEC $1"), &describe(b'S', "s"), &sync()]),
        ),
        be(11, &cat(&[&error("42601", "syntax error"), &ready(b'I')])),
        // The failed Parse defined nothing: a later Parse of the name is the one that counts.
        fe(
            12,
            &cat(&[
                &parse("s", "SELECT $1"),
                &bind("", "s", &[b"1"]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            13,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some("SELEC $1"), Some("SELECT $1")]);
    assert_eq!(sqlstates(&xs), [Some("42601"), None]);
    assert_eq!(xs[0].prepared_name.as_deref(), Some("s"));
}

#[test]
fn skipped_parse_defines_nothing() {
    // Executes fail at the first; the server skips the Parse of s2, so s2 does not exist.
    let (xs, _) = run(&with_hello(&[
        fe(
            10,
            &cat(&[
                &parse("", "SELECT 1/0"),
                &bind("", "", &[]),
                &execute("", 0),
                &parse("s2", "SELECT 'skipped'"),
                &sync(),
            ]),
        ),
        be(
            11,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &error("22012", "division by zero"),
                &ready(b'I'),
            ]),
        ),
        fe(
            12,
            &cat(&[
                &parse("s2", "SELECT 'real'"),
                &bind("", "s2", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            13,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some("SELECT 1/0"), Some("SELECT 'real'")]);
}

#[test]
fn portal_suspended_and_resumed() {
    let q = "SELECT g FROM generate_series(1, 3) g";
    let (xs, _) = run(&with_hello(&[
        fe(
            10,
            &cat(&[
                &parse("", q),
                &bind("p", "", &[]),
                &execute("p", 2),
                &flush(),
            ]),
        ),
        be(
            11,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &data_row(&[b"1"]),
                &data_row(&[b"2"]),
                &portal_suspended(),
            ]),
        ),
        fe(12, &cat(&[&execute("p", 2), &sync()])),
        be(
            13,
            &cat(&[&data_row(&[b"3"]), &complete("SELECT 1"), &ready(b'T')]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some(q), Some(q)]);
    assert_eq!(tags(&xs), [None, Some("SELECT 1")]);
    assert_eq!(times(&xs), [(10, 11), (12, 13)]);
}

#[test]
fn bind_parameter_values_are_never_stored() {
    let secret = b"hunter2-very-secret";
    let mut conn = PgConn::new();
    for ev in with_hello(&[
        fe(
            10,
            &cat(&[
                &parse("", "SELECT $1"),
                &bind("portal", "", &[secret]),
                &execute("portal", 0),
                &sync(),
            ]),
        ),
        be(
            11,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]) {
        push(&mut conn, &ev);
    }
    let xs = conn.take_statements();
    assert_eq!(xs.len(), 1);
    let dump = format!("{xs:?}");
    assert!(!dump.contains("hunter2"), "{dump}");
    assert_eq!(conn.buffered(), 0);
    // While a Bind is in progress, only its two names are held, not the values after them.
    let b = bind("portal", "", &[&[b'v'; 5000]]);
    conn.push_frontend(seg(20, &b[..3000]));
    assert_eq!(conn.buffered(), "portal\0\0".len());
    conn.push_frontend(seg(21, &b[3000..]));
    assert_eq!(conn.buffered(), 0);
}

#[test]
fn function_call_keeps_pairing_aligned() {
    let mut call = 1234u32.to_be_bytes().to_vec();
    call.extend(0u16.to_be_bytes());
    call.extend(0u16.to_be_bytes());
    call.extend(0u16.to_be_bytes());
    let (xs, stats) = run(&with_hello(&[
        fe(10, &msg(b'F', &call)),
        be(
            11,
            &cat(&[&msg(b'V', &(-1i32).to_be_bytes()), &ready(b'I')]),
        ),
        fe(12, &query("SELECT 1")),
        be(13, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(texts(&xs), [Some("SELECT 1")]);
    assert_eq!(stats, PgStats::default());
}

// ---- encryption handshake and startup ----

#[test]
fn ssl_request_answered_n_then_startup() {
    let (xs, conn) = replay(&[
        fe(1, &ssl_request()),
        be(2, b"N"),
        fe(3, &startup(&[("user", "u"), ("database", "d")])),
        be(4, &startup_reply()),
        fe(5, &query("SELECT 1")),
        be(6, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]);
    assert_eq!(texts(&xs), [Some("SELECT 1")]);
    assert!(!conn.encrypted());
    assert_eq!(conn.database(), Some("d"));
    assert_eq!(conn.stats(), PgStats::default());
}

#[test]
fn gss_then_ssl_requests_refused_then_startup() {
    let (xs, conn) = replay(&[
        fe(1, &gss_request()),
        be(2, b"N"),
        fe(3, &ssl_request()),
        be(4, b"N"),
        fe(5, &startup(&[("user", "u")])),
        be(6, &startup_reply()),
        fe(7, &query("SELECT 1")),
        be(8, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]);
    assert_eq!(xs.len(), 1);
    assert!(!conn.encrypted());
    assert_eq!(conn.stats(), PgStats::default());
}

#[test]
fn ssl_request_answered_s_means_encrypted() {
    let tls_hello = b"\x16\x03\x01\x00\x05hello";
    let (xs, conn) = replay(&[
        fe(1, &ssl_request()),
        be(2, b"S"),
        fe(3, tls_hello),
        be(4, b"\x16\x03\x03\x00\x02hi"),
        // Bytes that would parse as PostgreSQL if pushes were not ignored.
        fe(5, &query("SELECT 1")),
        be(6, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]);
    assert!(xs.is_empty());
    assert!(conn.encrypted());
    assert_eq!(
        conn.stats(),
        PgStats {
            encrypted_sessions: 1,
            ..PgStats::default()
        }
    );
}

#[test]
fn gssenc_answered_g_means_encrypted() {
    let (xs, conn) = replay(&[
        fe(1, &gss_request()),
        be(2, b"G"),
        fe(3, b"\x00\x00\x00\x20gss token bytes......"),
    ]);
    assert!(xs.is_empty());
    assert!(conn.encrypted());
    assert_eq!(conn.stats().encrypted_sessions, 1);
}

#[test]
fn tls_seen_before_the_answer_means_encrypted() {
    // The client's next write overtook the server's 'S' in the capture.
    let (_, conn) = replay(&[
        fe(1, &ssl_request()),
        fe(2, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        be(3, b"S"),
    ]);
    assert!(conn.encrypted());
    assert_eq!(conn.stats().encrypted_sessions, 1);
    assert_eq!(conn.stats().invalid_messages, 0);
}

#[test]
fn cancel_request_connection() {
    let (xs, conn) = replay(&[fe(1, &cancel_request())]);
    assert!(xs.is_empty());
    assert_eq!(conn.stats(), PgStats::default());
    assert_eq!(conn.user(), None);
}

#[test]
fn authentication_exchanges_are_part_of_startup() {
    // MD5: AuthenticationMD5Password, PasswordMessage, AuthenticationOk.
    let mut md5 = 5u32.to_be_bytes().to_vec();
    md5.extend(b"salt");
    let (xs, conn) = replay(&[
        fe(1, &startup(&[("user", "u")])),
        be(2, &msg(b'R', &md5)),
        fe(3, &msg(b'p', &cstr("md5abcdef"))),
        be(4, &startup_reply()),
        fe(5, &query("SELECT 1")),
        be(6, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]);
    assert_eq!(texts(&xs), [Some("SELECT 1")]);
    assert_eq!(conn.stats(), PgStats::default());
}

#[test]
fn failed_authentication() {
    let (xs, conn) = replay(&[
        fe(1, &startup(&[("user", "u"), ("database", "nope")])),
        be(2, &error("3D000", "database \"nope\" does not exist")),
    ]);
    assert!(xs.is_empty());
    assert_eq!(conn.stats(), PgStats::default());
}

// ---- joining mid-stream ----

#[test]
fn joined_mid_stream_at_a_message_boundary() {
    let (xs, conn) = replay(&[
        fe(10, &query("SELECT 1")),
        be(
            11,
            &cat(&[
                &row_desc(&["a"]),
                &data_row(&[b"1"]),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
        fe(
            12,
            &cat(&[
                &parse("", "SELECT 2"),
                &bind("", "", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            13,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]);
    assert_eq!(texts(&xs), [Some("SELECT 1"), Some("SELECT 2")]);
    assert_eq!(
        partials(&xs),
        [true, false],
        "the first cycle after joining may be paired with an earlier answer"
    );
    assert_eq!(conn.user(), None);
    assert_eq!(conn.stats().resyncs, 0, "joining is not a resync");
}

#[test]
fn joined_while_a_large_result_is_streaming() {
    // The server is in the middle of a DataRow of a query sent before the capture started.
    let row = data_row(&[b"0123456789abcdef0123456789"]);
    let mut tail = row[9..].to_vec();
    for _ in 0..20 {
        tail.extend(&row);
    }
    tail.extend(complete("SELECT 1000"));
    tail.extend(ready(b'I'));
    let (xs, conn) = replay(&[
        be(10, &tail),
        fe(20, &query("SELECT 2")),
        be(30, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]);
    assert_eq!(texts(&xs), [Some("SELECT 2")]);
    assert_eq!(tags(&xs), [Some("SELECT 1")]);
    let stats = conn.stats();
    assert_eq!(
        stats.unmatched_responses, 2,
        "CommandComplete and ReadyForQuery: {stats:?}"
    );
    assert!(stats.bytes_skipped > 0 && stats.bytes_skipped < row.len() as u64);
}

#[test]
fn joined_frontend_mid_message_finds_the_next_one() {
    let q = query("SELECT 'tail of an earlier query'");
    let (xs, conn) = replay(&[
        fe(10, &cat(&[&q[7..], &query("SELECT 42")])),
        be(11, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
        be(12, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]);
    assert_eq!(texts(&xs), [Some("SELECT 42")]);
    assert!(conn.stats().bytes_skipped > 0);
}

// ---- capture loss ----

#[test]
fn query_text_cut_by_the_capture() {
    let q = "SELECT a_long_column_name FROM a_table WHERE x = 1";
    let full_msg = query(q);
    let (xs, stats) = run(&with_hello(&[
        Event {
            to: To::Server,
            seg: cut(10, &full_msg[..20], full_msg.len() as u64),
        },
        be(11, &cat(&[&complete("SELECT 0"), &ready(b'I')])),
    ]));
    assert_eq!(texts(&xs), [Some(&q[..15])]);
    assert!(xs[0].partial);
    assert_eq!(tags(&xs), [Some("SELECT 0")]);
    assert_eq!(
        stats,
        PgStats::default(),
        "a gap inside a body is not a loss of framing"
    );
}

#[test]
fn huge_data_row_in_a_gap_is_skipped_by_count() {
    let body_len = 50_000_000u64;
    let mut head = vec![b'D'];
    head.extend(((body_len + 4) as u32).to_be_bytes());
    head.extend(1u16.to_be_bytes());
    head.extend(((body_len - 6) as u32).to_be_bytes());
    head.extend(b"xxxx");
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query("SELECT big FROM blobs")),
        be(11, &row_desc(&["big"])),
        Event {
            to: To::Client,
            seg: cut(12, &head, 1 + 4 + body_len),
        },
        be(13, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(tags(&xs), [Some("SELECT 1")]);
    assert_eq!(times(&xs), [(10, 13)]);
    assert!(!xs[0].partial);
    assert_eq!(stats, PgStats::default());
}

#[test]
fn backend_header_in_a_gap_resynchronises() {
    let mut rows = Vec::new();
    for i in 0..100 {
        rows.extend(data_row(&[format!("row {i}").as_bytes()]));
    }
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query("SELECT r FROM t")),
        be(11, &row_desc(&["r"])),
        // 100 bytes of ~1500 captured: the next header is unknown.
        Event {
            to: To::Client,
            seg: cut(12, &rows[..100], rows.len() as u64 - 30),
        },
        be(
            13,
            &cat(&[
                &rows[rows.len() - 30..],
                &complete("SELECT 100"),
                &ready(b'I'),
            ]),
        ),
        fe(20, &query("SELECT 2")),
        be(21, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(tags(&xs), [Some("SELECT 100"), Some("SELECT 1")]);
    assert_eq!(times(&xs), [(10, 13), (20, 21)]);
    assert_eq!(partials(&xs), [true, false]);
    assert_eq!(stats.resyncs, 1);
    assert!(stats.bytes_skipped > 0);
}

#[test]
fn lost_ready_for_query_does_not_shift_later_queries() {
    // The end of the first response (CommandComplete, ReadyForQuery) falls into a gap; the
    // client then sends its next queries.
    let mut resp = row_desc(&["r"]);
    for i in 0..50 {
        resp.extend(data_row(&[format!("value {i}").as_bytes()]));
    }
    resp.extend(complete("SELECT 50"));
    resp.extend(ready(b'I'));
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query("SELECT r FROM t")),
        Event {
            to: To::Client,
            seg: cut(11, &resp[..64], resp.len() as u64),
        },
        fe(20, &query("SELECT 2")),
        be(
            21,
            &cat(&[
                &row_desc(&["x"]),
                &data_row(&[b"2"]),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
        fe(30, &query("SELECT 3")),
        be(31, &cat(&[&complete("SELECT 3"), &ready(b'I')])),
    ]));
    assert_eq!(
        texts(&xs),
        [Some("SELECT r FROM t"), Some("SELECT 2"), Some("SELECT 3")]
    );
    assert_eq!(tags(&xs), [None, Some("SELECT 1"), Some("SELECT 3")]);
    assert_eq!(partials(&xs), [true, true, false]);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn lost_frontend_message_keeps_later_pairs_aligned() {
    // A whole batch of the client's falls into a gap (header included); its answers are
    // absorbed, and what follows pairs correctly.
    let lost = cat(&[
        &parse("", "SELECT 'lost'"),
        &bind("", "", &[]),
        &execute("", 0),
        &sync(),
    ]);
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query("SELECT 1")),
        be(11, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
        Event {
            to: To::Server,
            seg: cut(12, &[], lost.len() as u64),
        },
        be(
            13,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
        fe(14, &cat(&[&bind("", "", &[]), &execute("", 0), &sync()])),
        be(
            15,
            &cat(&[&bind_complete(), &complete("SELECT 1"), &ready(b'I')]),
        ),
        fe(16, &query("SELECT 3")),
        be(17, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    // The Bind after the loss refers to an unnamed statement that the lost Parse replaced: its
    // text is unknown, not the stale one.
    assert_eq!(texts(&xs), [Some("SELECT 1"), None, Some("SELECT 3")]);
    assert_eq!(
        partials(&xs),
        [false, true, false],
        "right, but only known to be once the ReadyForQuery after it came"
    );
    assert_eq!(stats.resyncs, 1);
    assert_eq!(
        stats.unmatched_responses, 3,
        "ParseComplete, BindComplete, CommandComplete"
    );
}

#[test]
fn bind_without_nul_terminators() {
    // A Bind whose names never end (a real bug class in other agents): no panic, no overrun,
    // and the Execute is not given a stale statement.
    let junk = vec![b'a'; 3000];
    let (xs, stats) = run(&with_hello(&[
        fe(
            10,
            &cat(&[
                &parse("", "SELECT 1"),
                &bind("", "", &[]),
                &execute("", 0),
                &sync(),
            ]),
        ),
        be(
            11,
            &cat(&[
                &parse_complete(),
                &bind_complete(),
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
        fe(12, &cat(&[&msg(b'B', &junk), &execute("", 0), &sync()])),
        be(
            13,
            &cat(&[&error("08P01", "invalid message format"), &ready(b'I')]),
        ),
    ]));
    assert_eq!(texts(&xs), [Some("SELECT 1"), None]);
    assert_eq!(sqlstates(&xs), [None, Some("08P01")]);
    assert_eq!(
        stats.invalid_messages, 0,
        "cut by the name bound, not known to be invalid"
    );
    let (_, stats) = run(&with_hello(&[fe(12, &msg(b'B', b"no terminators here"))]));
    assert_eq!(stats.invalid_messages, 1);
}

#[test]
fn impossible_lengths_lose_framing_not_the_connection() {
    for bad in [
        vec![b'Q', 0, 0, 0, 2],
        vec![b'Q', 0, 0, 0, 0],
        vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
        vec![b'S', 0, 0, 0, 9],
        vec![b'!', 0, 0, 0, 4],
    ] {
        let (xs, stats) = run(&with_hello(&[
            fe(10, &cat(&[&bad, &query("SELECT 1")])),
            be(11, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
            fe(12, &query("SELECT 2")),
            be(13, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
        ]));
        assert_eq!(texts(&xs), [Some("SELECT 1"), Some("SELECT 2")], "{bad:?}");
        assert_eq!(stats.invalid_messages, 1, "{bad:?}");
        assert_eq!(stats.resyncs, 1, "{bad:?}");
        assert!(!xs[1].partial);
    }
}

#[test]
fn backend_impossible_lengths() {
    let (xs, stats) = run(&with_hello(&[
        fe(10, &query("SELECT 1")),
        be(
            11,
            &cat(&[
                &[b'Z', 0, 0, 0, 9, b'I'][..],
                &complete("SELECT 1"),
                &ready(b'I'),
            ]),
        ),
    ]));
    assert_eq!(tags(&xs), [Some("SELECT 1")]);
    assert_eq!(stats.invalid_messages, 1);
}

// ---- close and bounds ----

#[test]
fn close_ends_what_is_pending_at_the_last_byte_seen() {
    let mut conn = PgConn::new();
    for ev in with_hello(&[
        fe(10, &query("SELECT slow()")),
        be(20, &row_desc(&["x"])),
        be(30, &data_row(&[b"1"])),
        fe(40, &cat(&[&bind("", "pre", &[]), &execute("", 0), &sync()])),
    ]) {
        push(&mut conn, &ev);
    }
    conn.close(1000);
    let xs = conn.take_statements();
    assert_eq!(texts(&xs), [Some("SELECT slow()"), None]);
    assert_eq!(times(&xs), [(10, 30), (40, 40)]);
    assert_eq!(partials(&xs), [true, true]);
    assert_eq!(conn.buffered(), 0);
}

#[test]
fn close_after_all_results_but_before_ready_adds_nothing() {
    let mut conn = PgConn::new();
    for ev in with_hello(&[fe(10, &query("SELECT 1")), be(20, &complete("SELECT 1"))]) {
        push(&mut conn, &ev);
    }
    conn.close(30);
    assert_eq!(conn.take_statements().len(), 1);
}

#[test]
fn unanswered_messages_are_bounded() {
    let mut conn = PgConn::new();
    for ev in hello() {
        push(&mut conn, &ev);
    }
    let n = MAX_PENDING + 500;
    for i in 0..n as u64 {
        conn.push_frontend(seg(10 + i, &execute("", 0)));
    }
    assert_eq!(conn.stats().dropped_statements, 501);
    conn.close(1_000_000);
    let xs = conn.take_statements();
    assert!(xs.len() < MAX_PENDING, "{}", xs.len());
    assert!(xs.iter().all(|s| s.partial));
}

#[test]
fn prepared_statements_are_bounded_oldest_forgotten() {
    let mut conn = PgConn::new();
    for ev in hello() {
        push(&mut conn, &ev);
    }
    let n = MAX_PREPARED + 10;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut batch = Vec::new();
        for i in chunk {
            batch.extend(parse(&format!("s{i}"), &format!("SELECT {i}")));
        }
        batch.extend(sync());
        conn.push_frontend(seg(10, &batch));
        let mut resp = Vec::new();
        resp.extend(std::iter::repeat_n(parse_complete(), chunk.len()).flatten());
        resp.extend(ready(b'I'));
        conn.push_backend(seg(11, &resp));
    }
    let last = format!("s{}", n - 1);
    conn.push_frontend(seg(
        12,
        &cat(&[
            &bind("", "s0", &[]),
            &execute("", 0),
            &bind("", &last, &[]),
            &execute("", 0),
            &sync(),
        ]),
    ));
    conn.push_backend(seg(
        13,
        &cat(&[
            &bind_complete(),
            &complete("SELECT 1"),
            &bind_complete(),
            &complete("SELECT 1"),
            &ready(b'I'),
        ]),
    ));
    let xs = conn.take_statements();
    let want = format!("SELECT {}", n - 1);
    assert_eq!(texts(&xs), [None, Some(want.as_str())]);
}

#[test]
fn an_answer_never_pairs_with_a_request_sent_after_it() {
    // A stale answer delivered late (e.g. found again by resynchronisation) carries its
    // segment's ts, from before the query was sent.
    let (xs, stats) = run(&with_hello(&[
        fe(100, &query("SELECT 1")),
        be(50, &cat(&[&complete("SELECT 9"), &ready(b'I')])),
        be(110, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(tags(&xs), [Some("SELECT 1")]);
    assert_eq!(times(&xs), [(100, 110)]);
    assert_eq!(stats.unmatched_responses, 2);
}

#[test]
fn command_complete_split_across_segments_ends_at_its_last_byte() {
    let c = complete("INSERT 0 1");
    let (xs, _) = run(&with_hello(&[
        fe(10, &query("INSERT INTO t VALUES (1)")),
        be(20, &c[..3]),
        be(30, &c[3..8]),
        be(40, &cat(&[&c[8..], &ready(b'I')])),
    ]));
    assert_eq!(times(&xs), [(10, 40)]);
    let q = query("SELECT 1");
    let (xs, _) = run(&with_hello(&[
        fe(10, &q[..1]),
        fe(11, &q[1..]),
        be(20, &cat(&[&complete("SELECT 1"), &ready(b'I')])),
    ]));
    assert_eq!(
        times(&xs),
        [(10, 20)],
        "starts with the segment of the type byte"
    );
}

#[test]
fn response_with_nothing_waiting_is_counted() {
    let (xs, stats) = run(&with_hello(&[be(
        10,
        &cat(&[&complete("SELECT 1"), &ready(b'I')]),
    )]));
    assert!(xs.is_empty());
    assert_eq!(stats.unmatched_responses, 2);
}

// ---- detection ----

#[test]
fn detects_startup_phase_packets() {
    let s = startup(&[("user", "u")]);
    assert_eq!(detect_frontend(&s), Detect::Yes);
    assert_eq!(detect_frontend(&s[..8]), Detect::Yes);
    assert_eq!(detect_frontend(&s[..7]), Detect::NeedMore);
    assert_eq!(detect_frontend(&ssl_request()), Detect::Yes);
    assert_eq!(detect_frontend(&gss_request()), Detect::Yes);
    assert_eq!(detect_frontend(&cancel_request()), Detect::Yes);
    assert_eq!(detect_frontend(&[]), Detect::NeedMore);
    // Protocol 2 and nonsense codes are not.
    let mut v2 = s.clone();
    v2[4..8].copy_from_slice(&(2u32 << 16).to_be_bytes());
    assert_eq!(detect_frontend(&v2), Detect::No);
    assert_eq!(detect_frontend(&[0, 0, 0, 8, 0, 0, 0, 0]), Detect::No);
    assert_eq!(detect_frontend(&[0, 1, 0, 8, 0, 3, 0, 0]), Detect::No);
}

#[test]
fn detects_frontend_messages_of_joined_connections() {
    for m in [
        query("SELECT 1"),
        query("  select * from t"),
        query("/* app */ INSERT INTO t VALUES (1)"),
        query("(SELECT 1) UNION (SELECT 2)"),
        query(""),
        parse("s1", "UPDATE t SET x = $1"),
        parse("", "WITH x AS (SELECT 1) SELECT * FROM x"),
        bind("", "s1", &[b"1"]),
        execute("", 0),
        sync(),
        describe(b'S', "s1"),
        close_stmt("s1"),
        copy_data(b"1\t2\n"),
        msg(b'X', &[]),
    ] {
        assert_eq!(detect_frontend(&m), Detect::Yes, "{m:?}");
    }
    assert_eq!(detect_frontend(&query("SELECT 1")[..8]), Detect::NeedMore);
    assert_eq!(detect_frontend(b"Q"), Detect::NeedMore);
    assert_eq!(detect_frontend(b"Q\0\0"), Detect::NeedMore);
}

#[test]
fn does_not_detect_other_protocols() {
    for b in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /api HTTP/1.1\r\n",
        b"PUT /x HTTP/1.1\r\n",
        b"DELETE /x HTTP/1.1\r\n",
        b"CONNECT h:443 HTTP/1.1\r\n",
        b"HEAD / HTTP/1.0\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76",
        b"hello world, this is random text",
        b"Sure, here is some text",
        b"EHLO mail.example.com\r\n",
        b"*3\r\n$3\r\nSET\r\n",
        b"+OK\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"{\"json\": true}",
        b"B 1234567",
        b"Q\0\0\0\x0dhello!!!\0",
        b"Q\0\0\0\x0fGET / HTTP\0",
        b"S\0\0\0\x05x",
        b"\0\0\0\0\0\0\0\0",
    ] {
        assert_eq!(
            detect_frontend(b),
            Detect::No,
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
}
