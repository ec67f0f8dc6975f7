//! `etl migrate` on an empty database and on one with the original `user_logins` and its rows.

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
