//! The AWS KMS key-encryption key, against the emulator's KMS.

use crate::support::{Setup, kms_kek, reveal_user, sample_path};

#[tokio::test(flavor = "multi_thread")]
async fn kms_wrapped_keys_load_and_reveal_and_another_key_is_refused() {
    let kek = kms_kek().await;
    let s = Setup::builder().kek(&kek).without_keys().build().await;
    let (db, etl) = (&s.db, &s.etl);
    let init = etl.run(&["keys", "init"]).await.json();
    assert_eq!(init["kek"], kek.as_str());
    let stored: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kek_uri, wrapped FROM vault.data_keys")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|(uri, wrapped)| uri == &kek && wrapped.len() > 32)
    );

    let summary = etl
        .run(&["run", "--input", sample_path().to_str().unwrap()])
        .await
        .json();
    assert_eq!(summary["loaded"], 99);
    let user = "424cdd21-063a-43a7-b91b-7ca1a833afae";
    let reveal = etl.run(&reveal_user(user, "kms check")).await;
    reveal.assert_success();
    assert!(
        reveal.stdout.contains("199.172.111.135"),
        "{}",
        reveal.stdout
    );

    let other = kms_kek().await;
    let refused = etl
        .clone()
        .with("PIIVAULT_KEK", &other)
        .run(&reveal_user(user, "wrong key"))
        .await;
    assert!(
        refused.code == 77 || refused.code == 78,
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("KMS") || refused.stderr.contains("cannot unwrap"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.stdout, "");

    let unreachable = etl
        .clone()
        .with("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .run(&reveal_user(user, "kms offline check"))
        .await;
    assert_eq!(unreachable.code, 69, "{}", unreachable.stderr);
    assert!(
        unreachable
            .stderr
            .contains("AWS KMS is unreachable (Decrypt"),
        "{}",
        unreachable.stderr
    );
    assert_eq!(
        db.count("SELECT count(*) FROM vault.reveal_audit").await,
        1,
        "only the successful reveal"
    );
}
