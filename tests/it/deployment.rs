//! Data keys are wrapped for one deployment (`PIIVAULT_DEPLOYMENT`): the KMS encryption context
//! and the local KEK's AAD name it, `vault.data_keys.deployment` records it, and a key of another
//! deployment is refused; legacy keys (deployment NULL) still open and `keys rewrap` binds them.

use aws_sdk_kms::primitives::Blob;
use piivault::kek::{Kek, KekError, WrapContext};

use crate::support::{Etl, Setup, TestDb, TestKek, aws_config, kms_kek, sample_path};

/// A migrated database with keys created by `keys init` for `deployment`, and `etl` for it.
async fn deployed(kek: &str, deployment: &str) -> (Setup, Etl) {
    let s = Setup::builder().kek(kek).without_keys().build().await;
    let etl = s.etl.clone().with("PIIVAULT_DEPLOYMENT", deployment);
    let init = etl.run(&["keys", "init"]).await.json();
    assert_eq!(init["deployment"], deployment);
    (s, etl)
}

/// (purpose, version, deployment, wrapped) of every stored key.
async fn stored(db: &TestDb) -> Vec<(String, i32, Option<String>, Vec<u8>)> {
    sqlx::query_as(
        "SELECT purpose, version, deployment, wrapped FROM vault.data_keys ORDER BY purpose, version",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_of_another_deployment_are_refused_by_name_under_a_file_kek() {
    let kek = TestKek::new();
    let (s, prod) = deployed(&kek.uri(), "prod-a").await;
    let db = &s.db;
    let keys = stored(db).await;
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .all(|(_, _, d, _)| d.as_deref() == Some("prod-a"))
    );
    prod.run(&["run", "--input", sample_path().to_str().unwrap()])
        .await
        .json();

    let staging = prod.clone().with("PIIVAULT_DEPLOYMENT", "staging-b");
    let refused = staging.run(&["keys", "verify"]).await;
    assert_eq!(refused.code, 78, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "vault.data_keys belongs to deployment prod-a; this etl is configured for staging-b (PIIVAULT_DEPLOYMENT)"
        ),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.stdout, "");
    // Every command that unwraps refuses the same way; nothing is written.
    let logins = db.count("SELECT count(*) FROM user_logins").await;
    let run = staging
        .run(&["run", "--input", sample_path().to_str().unwrap()])
        .await;
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, logins);
    let rotate = staging.run(&["keys", "rotate", "--purpose", "seal"]).await;
    assert_eq!(rotate.code, 78, "{}", rotate.stderr);
    let rewrap = staging
        .run(&["keys", "rewrap", "--to-kek", &kek.uri()])
        .await;
    assert_eq!(rewrap.code, 78, "{}", rewrap.stderr);
    assert_eq!(stored(db).await, keys, "refused jobs change no key");
    // Unset, the database's name stands in, and the message says so.
    let unset = prod.clone().without("PIIVAULT_DEPLOYMENT");
    let defaulted = unset.run(&["keys", "verify"]).await;
    assert_eq!(defaulted.code, 78, "{}", defaulted.stderr);
    assert!(
        defaulted.stderr.contains(&format!(
            "belongs to deployment prod-a; this etl is configured for {} (PIIVAULT_DEPLOYMENT unset",
            db.name
        )),
        "{}",
        defaulted.stderr
    );
    // A malformed name is a configuration error too.
    let bad = prod
        .clone()
        .with("PIIVAULT_DEPLOYMENT", "prod a")
        .run(&["keys", "verify"])
        .await;
    assert_eq!(bad.code, 78, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("PIIVAULT_DEPLOYMENT contains"),
        "{}",
        bad.stderr
    );

    prod.run(&["keys", "verify"]).await.assert_success();
    // The global flag wins over the variable.
    staging
        .run(&["--deployment", "prod-a", "keys", "verify"])
        .await
        .assert_success();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_wrapped_key_copied_and_relabelled_does_not_unwrap_in_another_deployment() {
    let kek = kms_kek().await;
    let (a, _a) = deployed(&kek, "a").await;
    let (b_setup, b) = deployed(&kek, "b").await;
    let (db_a, db_b) = (&a.db, &b_setup.db);
    let seal_a = stored(db_a).await.remove(0);
    assert_eq!((seal_a.0.as_str(), seal_a.1), ("seal", 1));
    let wrapped_a = seal_a.3;

    // The emulator enforces the encryption context on Decrypt, as KMS does: the same ciphertext
    // opens under deployment a only.
    let kms = aws_sdk_kms::Client::new(&aws_config().await);
    let decrypt = |deployment: Option<&str>| {
        let mut request = kms
            .decrypt()
            .key_id(kek.strip_prefix("kms:").unwrap())
            .ciphertext_blob(Blob::new(wrapped_a.clone()))
            .encryption_context("app", "piivault")
            .encryption_context("purpose", "seal")
            .encryption_context("version", "1");
        if let Some(d) = deployment {
            request = request.encryption_context("deployment", d);
        }
        request.send()
    };
    assert_eq!(
        decrypt(Some("a"))
            .await
            .unwrap()
            .plaintext
            .unwrap()
            .as_ref()
            .len(),
        32
    );
    for other in [Some("b"), None] {
        let err = decrypt(other).await.unwrap_err();
        let code = err.as_service_error().and_then(|e| {
            use aws_sdk_kms::error::ProvideErrorMetadata;
            e.code().map(str::to_owned)
        });
        assert_eq!(
            code.as_deref(),
            Some("InvalidCiphertextException"),
            "{other:?}"
        );
    }

    // Copied as is, B refuses it by name before asking KMS.
    sqlx::query(
        "UPDATE vault.data_keys SET wrapped = $1, deployment = 'a' WHERE purpose = 'seal' AND version = 1",
    )
    .bind(&wrapped_a)
    .execute(&db_b.pool)
    .await
    .unwrap();
    let named = b.run(&["keys", "verify"]).await;
    assert_eq!(named.code, 78, "{}", named.stderr);
    assert!(
        named.stderr.contains(
            "vault.data_keys belongs to deployment a; this etl is configured for b (PIIVAULT_DEPLOYMENT)"
        ),
        "{}",
        named.stderr
    );
    // Relabelled as b's own, KMS refuses it: the context says deployment b.
    sqlx::query("UPDATE vault.data_keys SET deployment = 'b' WHERE purpose = 'seal'")
        .execute(&db_b.pool)
        .await
        .unwrap();
    for args in [
        vec!["keys", "verify"],
        vec!["run", "--input", sample_path().to_str().unwrap()],
    ] {
        let refused = b.run(&args).await;
        assert_eq!(refused.code, 78, "{args:?}: {}", refused.stderr);
        assert!(
            refused
                .stderr
                .contains("cannot unwrap the seal key v1 (deployment b)"),
            "{}",
            refused.stderr
        );
    }
    assert_eq!(db_b.count("SELECT count(*) FROM user_logins").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_keys_still_open_and_rewrap_to_the_same_kek_binds_them() {
    let kek = TestKek::new();
    let (s, etl) = deployed(&kek.uri(), "prod-a").await;
    let db = &s.db;
    etl.run(&["run", "--input", sample_path().to_str().unwrap()])
        .await
        .json();

    // Turn both keys into keys wrapped before deployments existed: the legacy context, column NULL.
    let local = Kek::open(&kek.uri().parse().unwrap())
        .await
        .unwrap()
        .for_deployment(Some("prod-a".into()));
    let rows = piivault::store::keys::list(&db.pool).await.unwrap();
    let mut plains = Vec::new();
    for row in &rows {
        let key = piivault::keystore::unwrap_row(&local, row)
            .await
            .unwrap()
            .unwrap();
        let legacy = WrapContext {
            purpose: key.purpose,
            version: key.version,
            deployment: None,
        };
        let wrapped = local.wrap(&legacy, &key.plain).await.unwrap();
        sqlx::query(
            "UPDATE vault.data_keys SET wrapped = $3, deployment = NULL WHERE purpose = $1 AND version = $2",
        )
        .bind(row.purpose.as_str())
        .bind(row.version.0 as i32)
        .bind(&wrapped)
        .execute(&db.pool)
        .await
        .unwrap();
        plains.push((key.purpose, key.version, key.plain));
    }
    assert_eq!(
        db.count("SELECT count(*) FROM vault.data_keys WHERE deployment IS NULL")
            .await,
        2
    );

    // Legacy keys open in any deployment (they name none), with one warning per process.
    for deployment in ["prod-a", "staging-b"] {
        let verify = etl
            .clone()
            .with("PIIVAULT_DEPLOYMENT", deployment)
            .run(&["keys", "verify"])
            .await;
        verify.assert_success();
        assert_eq!(
            verify
                .stderr
                .matches("wrapped before deployments were bound")
                .count(),
            1,
            "{}",
            verify.stderr
        );
    }
    let status = etl.run(&["keys", "status"]).await;
    assert!(
        status.assert_success().stdout.contains(" legacy "),
        "{}",
        status.stdout
    );

    let out = etl
        .run(&["keys", "rewrap", "--to-kek", &kek.uri()])
        .await
        .json();
    assert_eq!(out["rewrapped"], 2);
    assert_eq!(out["bound_legacy"], 2);
    assert_eq!(out["deployment"], "prod-a");
    let keys = stored(db).await;
    assert!(
        keys.iter()
            .all(|(_, _, d, _)| d.as_deref() == Some("prod-a")),
        "column set"
    );
    // The new wraps are bound to prod-a: they open under that context only.
    for ((purpose, version, plain), (_, _, _, wrapped)) in plains.iter().zip(&keys) {
        let context = |deployment| WrapContext {
            purpose: *purpose,
            version: *version,
            deployment,
        };
        let opened = local
            .unwrap(&context(Some("prod-a")), wrapped, "")
            .await
            .unwrap();
        assert_eq!(opened.as_slice(), plain.as_slice());
        for other in [None, Some("staging-b")] {
            assert!(matches!(
                local.unwrap(&context(other), wrapped, "").await,
                Err(KekError::Unwrap { .. })
            ));
        }
    }
    let verify = etl.run(&["keys", "verify"]).await;
    verify.assert_success();
    assert!(
        !verify
            .stderr
            .contains("wrapped before deployments were bound"),
        "{}",
        verify.stderr
    );
    let refused = etl
        .clone()
        .with("PIIVAULT_DEPLOYMENT", "staging-b")
        .run(&["keys", "verify"])
        .await;
    assert_eq!(refused.code, 78, "{}", refused.stderr);
}
