//! Side-by-side token versions (issue 19): writers fill the pending key's slot, retokenize fills
//! older rows, and the switch is the database's to allow. Analysts see one version at a time,
//! and nobody with `psql` can show them another.

use sqlx::PgPool;

use crate::support::{DENIED, Setup, attempt};

const FIRST: &str = "{\"user_id\":\"s1\",\"ip\":\"10.1.0.1\",\"device_id\":\"dev-s\"}\n\
                     {\"user_id\":\"s2\",\"ip\":\"10.1.0.2\",\"device_id\":\"dev-s\"}\n";
const SECOND: &str = "{\"user_id\":\"s3\",\"ip\":\"10.1.0.3\",\"device_id\":\"dev-s\"}\n\
                      {\"user_id\":\"s4\",\"ip\":\"10.1.0.1\",\"device_id\":\"dev-t\"}\n";

/// The analysts' view: (user, masked device, token version) in user order.
async fn analysts_rows(s: &Setup) -> Vec<(String, Option<String>, Option<i32>)> {
    sqlx::query_as(
        "SELECT user_id::text, masked_device_id::text, token_version FROM user_logins ORDER BY user_id",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap()
}

/// Token versions the analysts' view shows.
async fn versions_shown(s: &Setup) -> Vec<Option<i32>> {
    sqlx::query_scalar("SELECT DISTINCT token_version FROM user_logins ORDER BY 1")
        .fetch_all(&s.db.pool)
        .await
        .unwrap()
}

/// A database with FIRST loaded and token key v2 pending.
async fn rotated() -> Setup {
    let s = Setup::new().await;
    s.load_lines(FIRST).await;
    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    s
}

/// The token keys as a rotation leaves them: v1 active in slot a, v2 pending in slot b.
async fn assert_v1_shown_v2_pending(s: &Setup) {
    let slots: Vec<(i32, String, Option<String>)> = sqlx::query_as(
        "SELECT version, state, slot FROM vault.data_keys WHERE purpose = 'token' ORDER BY version",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(
        slots,
        [
            (1, "active".into(), Some("a".into())),
            (2, "pending".into(), Some("b".into()))
        ]
    );
}

const PROMOTE_BY_HAND: &str =
    "UPDATE vault.data_keys SET state = 'previous' WHERE purpose = 'token' AND version = 1;
     UPDATE vault.data_keys SET state = 'active' WHERE purpose = 'token' AND version = 2;";

#[tokio::test(flavor = "multi_thread")]
async fn only_a_complete_slot_is_ever_shown_to_analysts() {
    let s = Setup::new().await;
    s.load_lines(FIRST).await;
    let (_admin, admin_url) = s.login("piivault_admin").await;
    let (_analyst, analyst_url) = s.login("piivault_analyst").await;
    let (_etl, etl_url) = s.login("piivault_etl").await;
    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    // Loaded while v2 is pending: the writer fills both slots.
    s.load_lines(SECOND).await;
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM etl.logins WHERE token_version_a = 1 AND token_version_b = 2"
        )
        .await,
        2,
        "rows written while v2 is pending carry both versions"
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM etl.logins WHERE token_version_b IS NULL")
            .await,
        2,
        "older rows wait for retokenize"
    );

    // The admin, with psql, cannot show analysts the half-filled slot.
    assert_eq!(
        attempt(&admin_url, PROMOTE_BY_HAND).await,
        "55000",
        "activating v2 by hand while 2 rows lack it"
    );
    for sql in [
        "SELECT vault.show_token_slot('b')",
        "UPDATE vault.token_view SET slot = 'b'",
        "CREATE OR REPLACE VIEW public.user_logins AS
         SELECT l.user_id, l.device_type, l.ip_token_b AS masked_ip, l.device_token_b AS masked_device_id,
                l.locale, l.app_version, l.create_date, l.message_id, l.app_version_text,
                l.token_version_b AS token_version, l.received_at
         FROM etl.logins l",
        "ALTER TABLE etl.logins RENAME COLUMN ip_token_b TO x",
        "SELECT * FROM vault.job_token_fill_rows(1, 2, '', 10)",
    ] {
        assert_eq!(attempt(&admin_url, sql).await, DENIED, "admin: {sql}");
    }
    // Neither analysts nor writers read the slots (the pending one is a second version).
    for (who, url) in [("analyst", &analyst_url), ("etl", &etl_url)] {
        for sql in [
            "SELECT ip_token_b FROM etl.logins",
            "SELECT device_token_a FROM etl.logins",
            "SELECT vault.rows_missing_slot('b', 2)",
        ] {
            assert_eq!(attempt(url, sql).await, DENIED, "{who}: {sql}");
        }
    }
    assert_eq!(
        versions_shown(&s).await,
        [Some(1)],
        "analysts still see v1 only"
    );

    let out = s.etl.run(&["keys", "retokenize"]).await.json();
    assert_eq!(
        out["retokenized"].as_i64(),
        Some(2),
        "only the rows from before the rotation needed filling"
    );
    assert_eq!(versions_shown(&s).await, [Some(2)]);
    let rows = analysts_rows(&s).await;
    assert_eq!(rows.len(), 4);
    let device = |user: &str| rows.iter().find(|r| r.0 == user).unwrap().1.clone();
    assert_eq!(
        device("s1"),
        device("s3"),
        "one device, one token, across the switch"
    );
    assert!(device("s1").unwrap().starts_with("v2:"));
    // The writer's v2 tokens are exactly what the key job computes from the originals.
    s.etl.run(&["keys", "verify"]).await.json();

    // Back to v1 by hand: refused once a row written under v2 alone lacks it.
    s.load_lines("{\"user_id\":\"s5\",\"device_id\":\"dev-s\"}\n")
        .await;
    let back = "UPDATE vault.data_keys SET state = 'previous' WHERE purpose = 'token' AND version = 2;
                UPDATE vault.data_keys SET state = 'active' WHERE purpose = 'token' AND version = 1;";
    assert_eq!(attempt(&admin_url, back).await, "55000");
    assert_eq!(versions_shown(&s).await, [Some(2)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_from_before_piivault_keep_their_masked_values_across_a_switch() {
    let s = Setup::new().await;
    s.load_lines(FIRST).await;
    sqlx::query(
        "INSERT INTO etl.logins (user_id, ip_token_a, device_token_a) VALUES ('legacy', 'old-ip-mask', 'old-dev-mask')",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();
    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    let out = s.etl.run(&["keys", "retokenize"]).await.json();
    assert_eq!(
        (out["retokenized"].as_i64(), out["copied"].as_i64()),
        (Some(2), Some(1))
    );
    let legacy: (Option<String>, Option<String>, Option<i32>) = sqlx::query_as(
        "SELECT masked_ip::text, masked_device_id::text, token_version FROM user_logins WHERE user_id = 'legacy'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(
        legacy,
        (
            Some("old-ip-mask".into()),
            Some("old-dev-mask".into()),
            None
        )
    );
    // Retiring v1 clears only v1's tokens: the copied legacy values have no version.
    s.etl
        .run(&["keys", "retire", "--purpose", "token", "--version", "1"])
        .await
        .json();
    assert_eq!(
        s.db.count("SELECT count(*) FROM etl.logins WHERE token_version_a IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE masked_ip = 'old-ip-mask'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_analysts_open_transaction_and_a_writer_neither_wait_for_the_switch_nor_hold_it() {
    let s = rotated().await;
    // An analyst's transaction that has read the view and stays open.
    let (_analyst, analyst_url) = s.login("piivault_analyst").await;
    let analyst = PgPool::connect(&analyst_url).await.unwrap();
    let mut holding = analyst.begin().await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM user_logins WHERE token_version = 1")
        .fetch_one(&mut *holding)
        .await
        .unwrap();
    assert_eq!(seen, 2);
    // And a writer's batch in flight: inserted, not committed, holding its row locks.
    let mut writer = s.db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO etl.logins (message_id, user_id, token_version_a, token_version_b)
         VALUES ('in-flight', 's9', 1, 2)",
    )
    .execute(&mut *writer)
    .await
    .unwrap();

    // Both still hold their locks: a switch that waited for either would never finish.
    let out = s.etl.run(&["keys", "retokenize"]).await.json();
    assert_eq!(out["retokenized"].as_i64(), Some(2));
    // The analyst's next statement sees the new version only; the writer commits unhindered.
    let versions: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT DISTINCT token_version FROM user_logins")
            .fetch_all(&mut *holding)
            .await
            .unwrap();
    assert_eq!(versions, [Some(2)]);
    holding.commit().await.unwrap();
    analyst.close().await;
    writer.commit().await.unwrap();
    let summary = s.load_lines(SECOND).await;
    assert_eq!(summary["loaded"], 2);
    assert_eq!(versions_shown(&s).await, [Some(2)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_cannot_move_rename_or_add_a_token_key_around_the_check() {
    let s = Setup::new().await;
    s.load_lines(FIRST).await;
    let (_admin, admin_url) = s.login("piivault_admin").await;
    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    for sql in [
        // Give the pending key the shown slot, or swap the slots.
        "UPDATE vault.data_keys SET slot = 'a' WHERE purpose = 'token' AND version = 2",
        "UPDATE vault.data_keys SET state = 'previous' WHERE purpose = 'token' AND version = 2;
         UPDATE vault.data_keys SET slot = 'b' WHERE purpose = 'token' AND version = 1;",
        // Rename a key, or turn the seal key into a token key.
        "UPDATE vault.data_keys SET version = 9 WHERE purpose = 'token' AND version = 1",
        "UPDATE vault.data_keys SET purpose = 'token', version = 9 WHERE purpose = 'seal'",
    ] {
        assert_eq!(attempt(&admin_url, sql).await, "55000", "admin: {sql}");
    }
    // Add a second key straight into the active state: refused while rows lack it.
    let add_active =
        "UPDATE vault.data_keys SET state = 'previous' WHERE purpose = 'token' AND version = 1;
         INSERT INTO vault.data_keys (purpose, version, kek_uri, wrapped, state, deployment)
         SELECT 'token', 3, kek_uri, wrapped, 'active', deployment FROM vault.data_keys
         WHERE purpose = 'token' AND version = 2;";
    assert_eq!(attempt(&admin_url, add_active).await, "55000");
    // Nor by claiming the mark vault.rewrite_data_keys() puts on its own transaction.
    assert_eq!(
        attempt(
            &admin_url,
            &format!("INSERT INTO vault.key_rewrites VALUES (pg_current_xact_id()); {add_active}")
        )
        .await,
        DENIED
    );
    // Nor may anyone but the triggers say which slot analysts see.
    assert_eq!(
        attempt(&admin_url, "UPDATE vault.token_view SET slot = 'b'").await,
        DENIED
    );
    assert_v1_shown_v2_pending(&s).await;
    assert_eq!(versions_shown(&s).await, [Some(1)]);
}

/// One writer's transaction (what a batch takes on etl.logins), rolled back; how long it took.
async fn probe_write(pool: &PgPool) -> std::time::Duration {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO etl.logins (message_id, user_id) VALUES ('probe', 'probe')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_waiting_for_a_long_batch_never_holds_other_writers_back() {
    let s = Setup::new().await;
    s.load_lines(FIRST).await;
    // A batch that stays open for seconds (a slow writer): the rotation's fence must wait for
    // it, and a LOCK that simply waited would queue every other writer behind it meanwhile.
    let mut slow = s.db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO etl.logins (message_id, user_id) VALUES ('slow-batch', 'slow')")
        .execute(&mut *slow)
        .await
        .unwrap();
    let rotate = s.etl.spawn(&["keys", "rotate", "--purpose", "token"]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut longest = std::time::Duration::ZERO;
    for _ in 0..8 {
        longest = longest.max(probe_write(&s.db.pool).await);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.data_keys WHERE purpose = 'token'")
            .await,
        1,
        "no pending key while a batch that lacks its slot is in flight"
    );
    // Each attempt queues writers for 300 ms at most (a second of slack for a loaded machine);
    // waiting out the slow batch would have taken the probes' whole 2.5 s.
    assert!(
        longest < std::time::Duration::from_millis(1300),
        "a writer waited {longest:?}"
    );
    slow.rollback().await.unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        rotate.wait_with_output(),
    )
    .await
    .expect("the rotation never got its fence")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM vault.data_keys WHERE purpose = 'token' AND version = 2 AND state = 'pending'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rewriting_the_key_table_does_not_scan_the_analysts_rows() {
    let s = rotated().await;
    // retire and rewrap rewrite the key table under an ACCESS EXCLUSIVE lock every writer's
    // key check waits for: putting the keys back must not scan etl.logins meanwhile.
    let mut tx = s.db.pool.begin().await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT vault.rewrite_data_keys()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(kept, 3, "seal v1, token v1 active, token v2 pending");
    let scans: i64 = sqlx::query_scalar("SELECT pg_stat_get_xact_numscans('etl.logins'::regclass)")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(scans, 0, "scans of etl.logins in the rewrite's transaction");
    let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.key_rewrites")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(marks, 0, "the mark ends with the rewrite");
    tx.commit().await.unwrap();
    assert_v1_shown_v2_pending(&s).await;
}
