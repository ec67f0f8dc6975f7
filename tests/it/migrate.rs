//! `etl migrate` on an empty database, on one with the original `user_logins` and its rows, and
//! on one in the middle of a token rotation when the token slots (0015) arrive.

use crate::support::{Etl, TestDb, TestKek, sample_path};

const ORIGINAL_DDL: &str = "CREATE TABLE user_logins(
    user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)";

type Legacy = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<chrono::NaiveDate>,
);

async fn legacy_rows(db: &TestDb) -> Vec<Legacy> {
    sqlx::query_as(
        "SELECT user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date
         FROM user_logins WHERE user_id LIKE 'old-%' ORDER BY user_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_keeps_a_preexisting_user_logins_and_is_idempotent() {
    let db = TestDb::new().await;
    sqlx::query(ORIGINAL_DDL).execute(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO user_logins VALUES
           ('old-1', 'ios', 'aGFzaDE=', 'aGFzaDI=', 'FR', 230, '2020-01-02'),
           ('old-2', NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before = legacy_rows(&db).await;
    assert_eq!(before.len(), 2);

    let kek = TestKek::new();
    let etl = Etl::new(&db.url, "unused", &kek.uri());
    etl.run(&["migrate"]).await.assert_success();
    assert_eq!(
        legacy_rows(&db).await,
        before,
        "existing rows survive unchanged"
    );
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'user_logins' ORDER BY ordinal_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            "user_id",
            "device_type",
            "masked_ip",
            "masked_device_id",
            "locale",
            "app_version",
            "create_date",
            "message_id",
            "app_version_text",
            "token_version",
            "received_at"
        ]
    );
    for table in [
        "vault.data_keys",
        "vault.login_pii",
        "vault.reveal_audit",
        "etl.quarantine",
    ] {
        assert_eq!(
            db.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table} exists"
        );
    }

    let applied = db.count("SELECT count(*) FROM _sqlx_migrations").await;
    etl.run(&["migrate"]).await.assert_success();
    assert_eq!(
        db.count("SELECT count(*) FROM _sqlx_migrations").await,
        applied,
        "second run is a no-op"
    );

    // piivault loads beside the legacy rows.
    etl.run(&["keys", "init"]).await.assert_success();
    let summary = etl
        .run(&["run", "--input", sample_path().to_str().unwrap()])
        .await
        .json();
    assert_eq!(summary["loaded"], 99);
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, 101);
    assert_eq!(legacy_rows(&db).await, before);
}

/// A row's user and its slot b: ip token, device token, version.
type SlotB = (String, Option<String>, Option<String>, Option<i32>);

#[tokio::test(flavor = "multi_thread")]
async fn a_token_rotation_in_progress_survives_the_move_to_token_slots() {
    let db = TestDb::new().await;
    // The schema as it was before migration 0015, mid-rotation: token key v2 pending, one row's
    // new tokens staged in etl.token_next, one not yet, one row from before piivault.
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 15)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&db.pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO vault.data_keys (purpose, version, state, kek_uri, wrapped) VALUES
           ('seal', 1, 'active', 'file:unused', '\\x00'), ('token', 1, 'active', 'file:unused', '\\x00'),
           ('token', 2, 'pending', 'file:unused', '\\x00');
         INSERT INTO user_logins (message_id, user_id, masked_ip, masked_device_id, token_version) VALUES
           ('m1', 'u1', 'v1:ip1', 'v1:dev1', 1), ('m2', 'u2', 'v1:ip2', NULL, 1);
         INSERT INTO user_logins (user_id, masked_ip) VALUES ('legacy', 'old-mask');
         INSERT INTO etl.token_next (message_id, token_version, masked_ip, masked_device_id) VALUES
           ('m1', 2, 'v2:ip1', 'v2:dev1');",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let kek = TestKek::new();
    let etl = Etl::new(&db.url, "unused", &kek.uri());
    etl.run(&["migrate"]).await.assert_success();

    let slots: Vec<SlotB> = sqlx::query_as(
        "SELECT user_id::text, ip_token_b::text, device_token_b::text, token_version_b
         FROM etl.logins ORDER BY user_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        slots,
        [
            ("legacy".into(), None, None, None),
            (
                "u1".into(),
                Some("v2:ip1".into()),
                Some("v2:dev1".into()),
                Some(2)
            ),
            ("u2".into(), None, None, None),
        ],
        "the staged tokens moved to slot b"
    );
    let shown: Vec<(String, Option<String>, Option<i32>)> = sqlx::query_as(
        "SELECT user_id::text, masked_ip::text, token_version FROM user_logins ORDER BY user_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        shown,
        [
            ("legacy".into(), Some("old-mask".into()), None),
            ("u1".into(), Some("v1:ip1".into()), Some(1)),
            ("u2".into(), Some("v1:ip2".into()), Some(1)),
        ],
        "analysts still see v1 through the view"
    );
    let keys: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT purpose, version, slot FROM vault.data_keys ORDER BY purpose, version",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        [
            ("seal".into(), 1, None),
            ("token".into(), 1, Some("a".into())),
            ("token".into(), 2, Some("b".into()))
        ]
    );
    assert_eq!(
        db.count("SELECT vault.rows_missing_slot('b', 2)").await,
        2,
        "u2 and the row from before piivault still lack v2"
    );
    let switch = sqlx::raw_sql(
        "UPDATE vault.data_keys SET state = 'previous' WHERE purpose = 'token' AND version = 1;
         UPDATE vault.data_keys SET state = 'active' WHERE purpose = 'token' AND version = 2;",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(
        switch.to_string().contains("2 row(s) do not carry it yet"),
        "{switch}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname = 'token_next'")
            .await,
        0
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname IN ('etl', 'vault')
           AND tablename IN ('logins', 'login_pii', 'quarantine') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "login_pii_pkey",
            "login_pii_user_id_idx",
            "logins_device_token_a_idx",
            "logins_device_token_b_idx",
            "logins_ip_token_a_idx",
            "logins_ip_token_b_idx",
            "logins_message_id_key",
            "quarantine_pkey",
            "quarantine_untagged_idx",
            "quarantine_user_tags_idx"
        ],
        "no index that only served the rotation jobs"
    );
}
