//! Refresh rules, exit codes and input validation against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

/// The action recorded for `table` in the last run.
async fn action(db: &TestDb, table: &str) -> Option<String> {
    db.client()
        .await
        .query_opt(
            "SELECT action FROM reporting.seeder_view_run WHERE table_name = $1 AND run_id = $2",
            &[&table, &db.last_run_id().await],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_refresh_keeps_the_view_and_its_oid() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public.src (id int); INSERT INTO public.src SELECT generate_series(1, 10)",
    )
    .await
    .unwrap();
    db.custom(
        "reporting.counts",
        "gotham",
        1,
        "SELECT count(*) AS n FROM public.src",
    )
    .await;

    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.counts").await.as_deref(),
        Some("create")
    );
    let oid = db.oid("reporting.counts").await.expect("view created");

    c.batch_execute("INSERT INTO public.src SELECT generate_series(11, 25)")
        .await
        .unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.counts").await.as_deref(),
        Some("refresh")
    );
    assert_eq!(
        db.oid("reporting.counts").await,
        Some(oid),
        "refresh must not recreate"
    );
    let n: i64 = c
        .query_one("SELECT n FROM reporting.counts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_query_is_rebuilt_keeping_indexes_grants_comment_and_owner() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    let id = db
        .custom(
            "reporting.v",
            "gotham",
            1,
            "SELECT i AS id FROM generate_series(1, 5) i",
        )
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let oid = db.oid("reporting.v").await.unwrap();

    let role = format!("rs_owner_{}", &db.name[8..20]);
    c.batch_execute(&format!(
        "CREATE ROLE {role}; CREATE ROLE {role}_col;
         CREATE UNIQUE INDEX v_id_key ON reporting.v (id);
         CREATE INDEX v_id_partial ON reporting.v (id) WHERE id > 2;
         GRANT SELECT ON reporting.v TO PUBLIC;
         COMMENT ON MATERIALIZED VIEW reporting.v IS 'dashboards read this; it''s important';
         GRANT SELECT (id) ON reporting.v TO {role}_col;
         COMMENT ON COLUMN reporting.v.id IS 'the key';
         ALTER MATERIALIZED VIEW reporting.v ALTER COLUMN id SET STATISTICS 500;
         ALTER MATERIALIZED VIEW reporting.v ALTER COLUMN id SET (n_distinct = -1);
         ALTER MATERIALIZED VIEW reporting.v SET (fillfactor = 70, autovacuum_enabled = false);
         COMMENT ON INDEX reporting.v_id_partial IS 'for the top';
         ALTER MATERIALIZED VIEW reporting.v CLUSTER ON v_id_key;
         ALTER MATERIALIZED VIEW reporting.v OWNER TO {role};"
    ))
    .await
    .unwrap();
    db.set_query(
        id,
        "SELECT i AS id, i * 10 AS score FROM generate_series(1, 7) i",
    )
    .await;

    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 0);
    assert_eq!(action(&db, "reporting.v").await.as_deref(), Some("rebuild"));
    assert_ne!(
        db.oid("reporting.v").await,
        Some(oid),
        "a changed query means a new view"
    );
    let score: i64 = c
        .query_one("SELECT sum(score)::bigint FROM reporting.v", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(score, 280);

    let indexes: Vec<String> = c
        .query(
            "SELECT indexname || ' ' || regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes
             WHERE schemaname = 'reporting' AND tablename = 'v' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "v_id_key btree (id)",
            "v_id_partial btree (id) WHERE (id > 2)"
        ]
    );
    let r = c
        .query_one(
            "SELECT obj_description('reporting.v'::regclass, 'pg_class'), pg_get_userbyid(relowner),
                    has_table_privilege('public', 'reporting.v', 'SELECT')
             FROM pg_class WHERE oid = 'reporting.v'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, Option<String>>(0).as_deref(),
        Some("dashboards read this; it's important")
    );
    assert_eq!(r.get::<_, String>(1), role);
    assert!(r.get::<_, bool>(2), "PUBLIC lost SELECT");
    // What else the old view carried: its column grant, column comment, statistics target and
    // options, storage parameters, index comment and CLUSTER mark.
    let r = c
        .query_one(
            &format!(
                "SELECT has_column_privilege('{role}_col', 'reporting.v', 'id', 'SELECT'),
                        col_description('reporting.v'::regclass, 1),
                        a.attstattarget::int4, a.attoptions::text[], c.reloptions::text[],
                        obj_description('reporting.v_id_partial'::regclass, 'pg_class'),
                        (SELECT indisclustered FROM pg_index WHERE indexrelid = 'reporting.v_id_key'::regclass)
                 FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'id'
                 WHERE c.oid = 'reporting.v'::regclass"
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0), "the column grant was lost");
    assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("the key"));
    assert_eq!(r.get::<_, i32>(2), 500);
    // (Some builds note more in `attoptions` on their own: only the ones set here are checked.)
    let column_options = r.get::<_, Vec<String>>(3);
    assert!(
        column_options.contains(&"n_distinct=-1".to_string()),
        "{column_options:?}"
    );
    let options = r.get::<_, Vec<String>>(4);
    for o in ["fillfactor=70", "autovacuum_enabled=false"] {
        assert!(options.contains(&o.to_string()), "{options:?}");
    }
    assert_eq!(
        r.get::<_, Option<String>>(5).as_deref(),
        Some("for the top")
    );
    assert!(r.get::<_, bool>(6), "the CLUSTER mark was lost");
    // No temporary relation left behind.
    let leftovers: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rs\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);

    // Unchanged afterwards: a refresh, not another rebuild.
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(action(&db, "reporting.v").await.as_deref(), Some("refresh"));
    c.batch_execute(&format!(
        "DROP MATERIALIZED VIEW reporting.v; DROP ROLE {role}; DROP ROLE {role}_col"
    ))
    .await
    .unwrap();
}

/// A column the new query no longer has takes its settings with it, and the warning names the
/// view readers know, not the temporary one it was built under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_columns_settings_are_reported_under_the_views_name() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db
        .custom("reporting.v", "gotham", 1, "SELECT 1 AS id, 2 AS gone")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.client()
        .await
        .batch_execute("COMMENT ON COLUMN reporting.v.gone IS 'soon gone'")
        .await
        .unwrap();
    db.set_query(id, "SELECT 1 AS id").await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 0);
    let err = stderr(&out);
    let warning = err
        .lines()
        .find(|l| l.contains("not carried over"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(
        warning.contains("view=reporting.v ")
            && warning.contains("column=gone")
            && !warning.contains("_rs_"),
        "{warning}"
    );
}

/// A reader querying the view all through a rebuild never gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_an_error_during_a_rebuild() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db
        .custom("reporting.live", "gotham", 1, "SELECT 1 AS version")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(id, "SELECT 2 AS version FROM (SELECT pg_sleep(1.5)) s")
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, client) = (stop.clone(), reads.clone(), db.client().await);
        tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client
                    .query_one("SELECT version FROM reporting.live", &[])
                    .await
                {
                    Ok(r) => {
                        let v: i32 = r.get(0);
                        if seen.last() != Some(&v) {
                            seen.push(v);
                        }
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (errors, seen)
        })
    };
    let out = db.run(&["run", "refresh_all"], &[]).await;
    stop.store(true, Ordering::SeqCst);
    let (errors, seen) = reader.await.unwrap();
    assert_exit(&out, 0);
    assert!(errors.is_empty(), "reader errors: {errors:?}");
    assert!(reads.load(Ordering::SeqCst) > 10, "the reader barely ran");
    assert_eq!(
        seen,
        [1, 2],
        "the reader saw the old view, then the new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrently_when_enabled_and_a_unique_index_allows_it() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.with_key",
        "gotham",
        1,
        "SELECT i AS id FROM generate_series(1, 50) i",
    )
    .await;
    db.custom(
        "reporting.without_key",
        "gotham",
        1,
        "SELECT i AS id FROM generate_series(1, 50) i",
    )
    .await;
    let on = [("SEEDER_REFRESH_CONCURRENTLY", "true")];
    assert_exit(&db.run(&["run", "refresh_all"], &on).await, 0);
    db.client()
        .await
        .batch_execute("CREATE UNIQUE INDEX ON reporting.with_key (id)")
        .await
        .unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &on).await, 0);
    assert_eq!(
        action(&db, "reporting.with_key").await.as_deref(),
        Some("refresh concurrently")
    );
    assert_eq!(
        action(&db, "reporting.without_key").await.as_deref(),
        Some("refresh")
    );
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.with_key").await.as_deref(),
        Some("refresh"),
        "off by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_built_without_the_tool_is_adopted_once() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    c.batch_execute("CREATE MATERIALIZED VIEW reporting.legacy AS SELECT 1 AS id")
        .await
        .unwrap();
    let oid = db.oid("reporting.legacy").await.unwrap();
    db.custom("reporting.legacy", "gotham", 1, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.legacy").await.as_deref(),
        Some("adopt")
    );
    let adopted = db.oid("reporting.legacy").await.unwrap();
    assert_ne!(adopted, oid);
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.legacy").await.as_deref(),
        Some("refresh")
    );
    assert_eq!(db.oid("reporting.legacy").await, Some(adopted));
}

/// A view the tool built, then dropped and created again by hand with another definition, is
/// not refreshed as it now is: `plan` and the run adopt it, rebuilding it from its manifest.
/// The same holds for a view created by the tool (its OID is recorded after the create) and for
/// a dependent recreated by a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_replaced_by_hand_is_adopted_not_refreshed() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    let up = db
        .custom("reporting.up", "gotham", 1, "SELECT 1 AS x")
        .await;
    db.custom(
        "reporting.reader",
        "gotham",
        1,
        "SELECT x FROM reporting.up",
    )
    .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    // A rebuild of `up` recreates `reader` in its swap.
    db.set_query(up, "SELECT 2 AS x").await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.reader").await.as_deref(),
        Some("rebuilt with upstream")
    );
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.up").await.as_deref(),
        Some("refresh")
    );
    assert_eq!(
        action(&db, "reporting.reader").await.as_deref(),
        Some("refresh")
    );

    c.batch_execute(
        "DROP MATERIALIZED VIEW reporting.reader;
         CREATE MATERIALIZED VIEW reporting.reader AS SELECT 42 AS x, 'hand' AS y",
    )
    .await
    .unwrap();
    let out = db.run(&["run", "plan"], &[]).await;
    assert_exit(&out, 0);
    let plan = stdout(&out);
    assert!(
        plan.lines()
            .any(|l| l.contains("reporting.reader") && l.contains("adopt")),
        "{plan}"
    );
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.reader").await.as_deref(),
        Some("adopt")
    );
    let row = c
        .query_one("SELECT * FROM reporting.reader", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.len(), row.get::<_, i32>(0)),
        (1, 2),
        "the manifest's query"
    );
    // From then on a refresh again.
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_eq!(
        action(&db, "reporting.reader").await.as_deref(),
        Some("refresh")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_canned_report_is_one_view_refreshed_once_per_run() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.canned(
        "reporting.shared",
        "SELECT 1 AS id",
        &[(1, "gotham"), (2, "metropolis"), (3, "smallville")],
    )
    .await;
    db.custom("reporting.gotham_own", "gotham", 1, "SELECT 2 AS id")
        .await;
    for _ in 0..2 {
        assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
        let run = db.last_run_id().await;
        let rows = db.history(&run).await;
        let shared: Vec<_> = rows.iter().filter(|r| r.0 == "reporting.shared").collect();
        assert_eq!(shared.len(), 1, "{rows:?}");
        assert_eq!(shared[0].1, "success");
    }
    let slug: String = db
        .client()
        .await
        .query_one(
            "SELECT agency_slug FROM reporting.seeder_run_history WHERE table_name = 'reporting.shared' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slug, "gotham,metropolis,smallville");

    // refresh_agency includes the canned view its agency shares.
    let out = db.run(&["run", "refresh_agency", "metropolis"], &[]).await;
    assert_exit(&out, 0);
    let rows = db.history(&db.last_run_id().await).await;
    let tables: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(tables, ["reporting.shared"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_selection_errors() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.good", "gotham", 1, "SELECT 1 AS id")
        .await;
    let off = db
        .custom("reporting.off", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.client()
        .await
        .execute(
            "UPDATE reporting.seeder_custom_report_manifest SET enabled = false WHERE id = $1",
            &[&(off as i32)],
        )
        .await
        .unwrap();
    db.custom("reporting.only_off", "smallville", 9, "SELECT 1 AS id")
        .await;
    db.client()
        .await
        .execute("UPDATE reporting.seeder_custom_report_manifest SET enabled = false WHERE agency_slug = 'smallville'", &[])
        .await
        .unwrap();

    assert_exit(
        &db.run(&["run", "refresh_table", "reporting.good"], &[])
            .await,
        0,
    );

    let out = db
        .run(&["run", "refresh_table", "reporting.nothing_here"], &[])
        .await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("no manifest names table reporting.nothing_here"),
        "{}",
        stderr(&out)
    );

    let out = db
        .run(&["run", "refresh_table", "reporting.off"], &[])
        .await;
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("disabled"), "{}", stderr(&out));

    let out = db.run(&["run", "refresh_table", "not a table"], &[]).await;
    assert_exit(&out, 2);

    let out = db.run(&["run", "refresh_agency", "atlantis"], &[]).await;
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("atlantis"), "{}", stderr(&out));

    let out = db.run(&["run", "refresh_agency", "smallville"], &[]).await;
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("disabled"), "{}", stderr(&out));

    db.custom("reporting.broken", "gotham", 1, "SELECT 1 / 0 AS x")
        .await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("division by zero"),
        "{}",
        stdout(&out)
    );
    assert_exit(
        &db.run(&["run", "refresh_table", "reporting.good"], &[])
            .await,
        0,
    );
}

/// Two half-filled manifests with the same invalid (empty) name are two views: each has its own
/// status row counting its own failures, its own per-view history row, and its own metric series
/// (Prometheus refuses a file with the same series twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_sharing_an_invalid_name_keep_separate_records() {
    let db = TestDb::new().await;
    db.migrate().await;
    let first = db.custom("", "gotham", 1, "SELECT 1 AS id").await;
    let second = db.custom("", "star", 3, "SELECT 1 AS id").await;
    let metrics = db.dir.path().join("m.prom");
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--metrics-file",
                metrics.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let c = db.client().await;
    let status: Vec<(String, i32)> = c
        .query(
            "SELECT table_name, consecutive_failures FROM reporting.seeder_job_status ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        status,
        [
            (format!("(no table name) (manifest {first})"), 1),
            (format!("(no table name) (manifest {second})"), 1)
        ]
    );
    let view_runs: i64 = c
        .query_one(
            "SELECT count(*) FROM reporting.seeder_view_run WHERE run_id = $1",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(view_runs, 2);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .collect();
    let mut unique = series.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), series.len(), "a series twice:\n{text}");
}

/// PostgreSQL the tool's parser does not know is accepted when its tokens show one query with no
/// locking clause, and built like any view, after the views it reads (found from its tokens);
/// what PostgreSQL then refuses (a missing column, a data-modifying WITH) is an error naming its
/// reason, and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_syntax_the_parser_lacks_is_built_after_what_it_reads() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public.victim (id int); INSERT INTO public.victim VALUES (1), (2);
         CREATE TABLE public.base AS SELECT 1 AS n",
    )
    .await
    .unwrap();
    // Manifest order puts the readers first; the one reading reporting.upstream must still run
    // after it, on the first run (nothing exists yet, so only its tokens tell).
    let good = [
        (
            "reporting.reads_upstream",
            "select n from reporting.upstream where n between symmetric 5 and 0",
        ),
        ("reporting.rows_from", "select * from rows from (generate_series(1,2)) as t(x)"),
        ("reporting.symmetric", "select n from public.base where n between symmetric 2 and 1"),
        ("reporting.isnull", "select n, n isnull as missing from public.base"),
        (
            "reporting.frame",
            "select n, sum(n) over (order by n groups between 1 preceding and current row exclude current row) as s from public.base",
        ),
        ("reporting.upstream", "SELECT 3 AS n"),
    ];
    for (table, query) in good {
        db.custom(table, "gotham", 1, query).await;
    }
    db.custom(
        "reporting.missing_column",
        "gotham",
        1,
        "select nope from public.base where n between symmetric 2 and 1",
    )
    .await;
    db.custom(
        "reporting.deletes",
        "gotham",
        1,
        "with d as (delete from public.victim returning id) select id from d where id between symmetric 3 and 0",
    )
    .await;
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "8")])
        .await;
    assert_exit(&out, 1);
    let rows = db.history(&db.last_run_id().await).await;
    for (table, _) in good {
        let (_, status, errors) = rows.iter().find(|r| r.0 == table).unwrap();
        assert_eq!(status, "success", "{table}: {errors:?}");
        assert!(db.oid(table).await.is_some(), "{table}");
    }
    let n: i32 = c
        .query_one("SELECT n FROM reporting.reads_upstream", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    for (table, says) in [
        ("reporting.missing_column", "nope"),
        ("reporting.deletes", "data-modifying"),
    ] {
        let (_, status, errors) = rows.iter().find(|r| r.0 == table).unwrap();
        assert_eq!(status, "error", "{table}");
        assert!(
            errors.as_deref().unwrap_or_default().contains(says),
            "{table}: {errors:?}"
        );
        assert!(db.oid(table).await.is_none(), "{table}");
    }
    let left: i64 = c
        .query_one("SELECT count(*) FROM public.victim", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "a query ran that must not");
    // A second run refreshes them (the stored hash matches), keeping their OIDs.
    let oid = db.oid("reporting.symmetric").await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    assert_eq!(db.oid("reporting.symmetric").await, oid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_execute_nothing_and_the_rest_still_runs() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE reporting.victim (id int); CREATE TABLE reporting.taken (id int)",
    )
    .await
    .unwrap();
    let long = format!("reporting.{}", "x".repeat(64));
    let bad_names = [
        "",
        "reporting",
        "a.b.c",
        long.as_str(),
        "reporting.\"quoted\"",
        "reporting.x;DROP TABLE reporting.victim",
        "reporting. spaced",
        "reporting.tab\there",
        "reporting.zero\u{200b}width",
    ];
    for name in bad_names {
        db.custom(name, "gotham", 1, "SELECT 1 AS id").await;
    }
    db.custom(
        "reporting.two_statements",
        "gotham",
        1,
        "SELECT 1 AS id; DROP TABLE reporting.victim",
    )
    .await;
    db.custom(
        "reporting.not_a_query",
        "gotham",
        1,
        "DROP TABLE reporting.victim",
    )
    .await;
    db.custom(
        "reporting.select_into",
        "gotham",
        1,
        "SELECT 1 AS id INTO reporting.sneaky",
    )
    .await;
    db.custom("reporting.taken", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.fine", "gotham", 1, "SELECT 1 AS id")
        .await;

    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let rows = db.history(&db.last_run_id().await).await;
    assert_eq!(rows.len(), bad_names.len() + 5, "{rows:?}");
    for (table, status, errors) in &rows {
        if table == "reporting.fine" {
            assert_eq!(status, "success");
            continue;
        }
        assert_eq!(status, "error", "{table}");
        let reason = errors.clone().unwrap_or_default();
        assert!(!reason.is_empty(), "{table} has no reason");
        if table.contains("two_statements") {
            assert!(reason.contains("statement"), "{reason}");
        }
        if table == "reporting.taken" {
            assert!(reason.contains("is a table"), "{reason}");
        }
    }
    assert!(db.oid("reporting.victim").await.is_some(), "victim dropped");
    assert!(db.oid("reporting.sneaky").await.is_none());
    assert!(db.oid("reporting.fine").await.is_some());
    let kind: String = c
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'reporting.taken'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "r", "a table of the manifest's name is left alone");
}

/// The repository's own fallback: PostgreSQL refuses CONCURRENTLY for a view without a usable
/// unique index (here: only an expression index), and the plain form still refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refresh_falls_back_to_plain_when_postgres_refuses() {
    use reporting_seeder::repositories::{views, Rel};
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public.src (id int); INSERT INTO public.src VALUES (1);
         CREATE MATERIALIZED VIEW public.expr_key AS SELECT id FROM public.src;
         CREATE UNIQUE INDEX ON public.expr_key ((id + 0));
         INSERT INTO public.src VALUES (2);",
    )
    .await
    .unwrap();
    let refused = c
        .batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY public.expr_key")
        .await;
    assert!(
        refused.is_err(),
        "PostgreSQL accepted CONCURRENTLY; the test no longer covers the fallback"
    );
    views::refresh(
        &c,
        Rel {
            schema: "public",
            name: "expr_key",
        },
        true,
    )
    .await
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM public.expr_key", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// A refresh and its ANALYZE go as one transaction: ANALYZE runs when the refresh succeeded (the
/// view gets statistics and its row estimate), never after a failed one (the view keeps what it
/// had), and after the plain fallback when CONCURRENTLY is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_follows_a_refresh_only_when_it_succeeded() {
    use etl_core::db::{ConnectionSettings, PostgresClient};
    use reporting_seeder::repositories::{PgStore, Rel, Store};
    let db = TestDb::new().await;
    // The figures' statement records a view's OID in the control tables, as every run has them.
    db.migrate().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public.src (id int); INSERT INTO public.src SELECT generate_series(1, 3);
         CREATE MATERIALIZED VIEW public.ratio AS
             SELECT g AS id, 10 / (SELECT count(*) FROM public.src)::int AS r
             FROM generate_series(1, 4) AS g;
         CREATE MATERIALIZED VIEW public.expr_key AS SELECT id FROM public.src;
         CREATE UNIQUE INDEX ON public.expr_key ((id + 0));",
    )
    .await
    .unwrap();
    let settings = ConnectionSettings::from_config(db.url.parse().unwrap());
    let store = PgStore::new(PostgresClient::new(&settings, 1).unwrap());
    let mut session = store.session().await.unwrap();
    let stats_rows = |view: &'static str| {
        let c = &c;
        async move {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = $1",
                    &[&view],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    let rel = |name| Rel {
        schema: "public",
        name,
    };
    assert_eq!(stats_rows("ratio").await, 0, "not analyzed yet");

    // The refresh fails (division by zero): nothing is analyzed, the old contents stay.
    c.batch_execute("DELETE FROM public.src").await.unwrap();
    let failed = session.refresh_and_analyze(rel("ratio"), false).await;
    assert!(failed.is_err(), "the refresh should have failed");
    assert_eq!(
        stats_rows("ratio").await,
        0,
        "ANALYZE ran after a failed refresh"
    );
    let kept: i64 = c
        .query_one("SELECT count(*) FROM public.ratio", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 4);

    // It succeeds: refreshed, analyzed, and the figures are the new contents'.
    c.batch_execute("INSERT INTO public.src SELECT generate_series(1, 5)")
        .await
        .unwrap();
    let stats = session
        .refresh_and_analyze(rel("ratio"), false)
        .await
        .unwrap();
    assert_eq!(
        stats.rows, 4,
        "the estimate ANALYZE leaves (none before it)"
    );
    assert!(stats.bytes > 0);
    assert_eq!(stats_rows("ratio").await, 2, "both columns analyzed");

    // CONCURRENTLY refused (only an expression index): the plain form, then ANALYZE.
    let stats = session
        .refresh_and_analyze(rel("expr_key"), true)
        .await
        .unwrap();
    assert_eq!(stats.rows, 5);
    assert_eq!(stats_rows("expr_key").await, 1);
}

/// A view's `running` row and its outcome commit without waiting for the WAL flush, for their
/// own transaction only: the session's setting is back as configured for the refresh that
/// follows, and the rows are there for other sessions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookkeeping_commits_leave_the_sessions_durability_as_configured() {
    use reporting_seeder::repositories::{HistoryRoutes, Outcome, ReportType, Session, ViewRecord};
    let db = TestDb::new().await;
    db.migrate().await;
    let mut session = pg_session(&db).await;
    assert_eq!(show(&session, "synchronous_commit").await, "on");
    let routes = HistoryRoutes::default();
    let view = ViewRecord {
        table_name: "reporting.v".into(),
        manifest_id: 1,
        report_name: "v".into(),
        report_type: ReportType::Custom,
        agency_id: 1,
        agency_slug: "gotham".into(),
    };
    session
        .start_run("r1", "refresh_all", "", &[])
        .await
        .unwrap();
    let id = session.record_start(routes, "r1", &view).await.unwrap();
    assert_eq!(
        show(&session, "synchronous_commit").await,
        "on",
        "after the running row"
    );
    let outcome = Outcome {
        status: "success",
        action: Some("refresh"),
        duration_ms: 5,
        rows: 1,
        bytes: 8192,
        error: None,
        attempts: 1,
        statement: None,
    };
    session
        .record_finish(routes, "r1", &view, Some(id), &outcome)
        .await
        .unwrap();
    assert_eq!(
        show(&session, "synchronous_commit").await,
        "on",
        "after the outcome"
    );
    assert_eq!(
        db.history("r1").await,
        vec![("reporting.v".to_string(), "success".to_string(), None)]
    );
}

/// A worker's session, once warmed, plans its prepared bookkeeping statements once (a generic
/// plan) rather than at each of their first five executions, and has the server check for a
/// vanished client while a statement runs; a fresh session keeps the server's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmed_sessions_plan_their_statements_once() {
    use reporting_seeder::repositories::{HistoryRoutes, Session};
    let db = TestDb::new().await;
    db.migrate().await;
    let mut session = pg_session(&db).await;
    assert_eq!(show(&session, "plan_cache_mode").await, "auto");
    session.warm(HistoryRoutes::default()).await.unwrap();
    assert_eq!(
        show(&session, "plan_cache_mode").await,
        "force_generic_plan"
    );
    // And the server checks, while a statement runs, that the tool is still there.
    assert_eq!(
        show(&session, "client_connection_check_interval").await,
        "2s"
    );
    // The statements every view runs are prepared on it.
    let prepared: i64 = session
        .client()
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(prepared >= 5, "{prepared} statements prepared");
}

/// A PostgreSQL session of the tool's own on the test's database.
async fn pg_session(db: &TestDb) -> reporting_seeder::repositories::PgSession {
    use etl_core::db::{ConnectionSettings, DatabaseClient, PostgresClient};
    let settings = ConnectionSettings::from_config(db.url.parse().unwrap());
    let client = PostgresClient::new(&settings, 1).unwrap();
    reporting_seeder::repositories::PgSession::from_connection(client.connection().await.unwrap())
}

/// A setting's value in that session.
async fn show(session: &reporting_seeder::repositories::PgSession, name: &str) -> String {
    session
        .client()
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .unwrap()
        .get(0)
}

/// A first build is one transaction sent in one flight: the view and its state row both land, or
/// neither does (the failing statement's own error is returned), and either way the connection
/// is left outside any transaction for the next view. A missing schema is made first, on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_build_lands_whole_or_not_at_all() {
    use etl_core::db::{ConnectionSettings, PostgresClient};
    use reporting_seeder::repositories::{PgStore, Rel, Store};
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    let settings = ConnectionSettings::from_config(db.url.parse().unwrap());
    let store = PgStore::new(PostgresClient::new(&settings, 1).unwrap());
    let mut session = store.session().await.unwrap();
    let state = |key: &'static str| {
        let c = &c;
        async move {
            c.query_opt(
                "SELECT query_hash, built_by_run_id FROM reporting.seeder_view_state WHERE table_name = $1",
                &[&key],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        }
    };
    let schema_exists = |name: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        }
    };

    let failed = session
        .create_view(
            Rel {
                schema: "fresh",
                name: "broken",
            },
            true,
            "SELECT 1 / 0 AS x",
            "h1",
            "run-1",
        )
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("division by zero"), "{failed}");
    assert!(
        schema_exists("fresh").await,
        "the schema is made in a transaction of its own, before the view's"
    );
    assert_eq!(state("fresh.broken").await, None);
    assert_eq!(
        db.oid("fresh.broken").await,
        None,
        "the failed view is not there"
    );

    // Validation refuses a second statement long before this; the repository does not rely on
    // it: the manifest's text runs as exactly one statement or not at all.
    let smuggled = session
        .create_view(
            Rel {
                schema: "fresh",
                name: "two",
            },
            true,
            "SELECT 1 AS x; CREATE TABLE public.smuggled (id int)",
            "h3",
            "run-1",
        )
        .await
        .unwrap_err();
    assert!(
        smuggled.to_string().contains("multiple commands"),
        "{smuggled}"
    );
    assert_eq!(
        db.oid("public.smuggled").await,
        None,
        "the second statement never ran"
    );

    // The same connection (the pool holds one) builds the next view outside any leftover
    // transaction: what it creates is visible to others at once.
    let rows = session
        .create_view(
            Rel {
                schema: "fresh",
                name: "good",
            },
            true,
            "SELECT g AS id FROM generate_series(1, 7) AS g",
            "h2",
            "run-2",
        )
        .await
        .unwrap();
    assert_eq!(rows, 7);
    assert!(schema_exists("fresh").await);
    assert_eq!(
        state("fresh.good").await,
        Some(("h2".to_string(), "run-2".to_string()))
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM fresh.good", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    let open: Option<i64> = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, Some(0), "no session is left inside a transaction");
}

/// Views of one new schema are built at once: none waits for another's build, and none fails
/// because another made the schema first; each ends with its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_one_new_schema_are_built_together() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "fresh.slow",
        "gotham",
        1,
        "SELECT pg_sleep(0.5)::text AS s, 1 AS id",
    )
    .await;
    db.custom("fresh.quick", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("fresh.broken", "gotham", 1, "SELECT 1 / 0 AS id")
        .await;
    let before = db.rollbacks().await;
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "3")])
        .await;
    assert_exit(&out, 1);
    // The broken view's transaction, and nothing else: the others did not race each other to
    // the schema (an ERROR on pg_namespace's unique index in the server's log, each time).
    assert_eq!(db.rollbacks().await - before, 1);
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT table_name, status, coalesce(errors, ''),
                    extract(epoch FROM finish_time - start_time)::float8
             FROM reporting.seeder_run_history ORDER BY table_name",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, f64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let find = |t: &str| got.iter().find(|g| g.0 == t).unwrap().clone();
    assert_eq!(find("fresh.slow").1, "success", "{got:?}");
    assert_eq!(find("fresh.quick").1, "success", "{got:?}");
    let broken = find("fresh.broken");
    assert_eq!(broken.1, "error", "{got:?}");
    assert!(broken.2.contains("division by zero"), "{got:?}");
    assert!(
        find("fresh.quick").3 < 0.4,
        "the quick view waited for the slow one: {got:?}"
    );
}

/// A reader whose snapshot was taken before a rebuild (a `REPEATABLE READ` report, a release
/// snapshot's capture) sees the rebuilt view and the views recreated with it filled, as after a
/// plain refresh, never empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_is_seen_whole_by_snapshots_taken_before_it() {
    let db = TestDb::new().await;
    db.migrate().await;
    let up = db
        .custom(
            "reporting.up",
            "gotham",
            1,
            "SELECT g FROM generate_series(1, 10) AS s(g)",
        )
        .await;
    db.custom("reporting.down", "gotham", 1, "SELECT g FROM reporting.up")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(up, "SELECT g FROM generate_series(1, 20) AS s(g)")
        .await;
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("rebuild"), "{}", stdout(&out));
    let seen: (i64, i64) = {
        let r = reader
            .query_one(
                "SELECT (SELECT count(*) FROM reporting.up), (SELECT count(*) FROM reporting.down)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(seen, (20, 20));
    let (status, rows): (String, i64) = {
        let r = db
            .client()
            .await
            .query_one(
                "SELECT status, records_processed FROM reporting.seeder_run_history
                 WHERE table_name = 'reporting.up' ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), rows), ("success", 20));
}
