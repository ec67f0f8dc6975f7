//! Signed audit checkpoints: a checkpoint kept off-host proves later that the trail still holds
//! every row it had — which the hash chain alone cannot show once the table's owner deletes the
//! newest rows and rewinds the head. Signed by a local key wrapped by the KEK, or by an
//! asymmetric key in the emulator's KMS.

use std::path::Path;

use crate::support::{Etl, Setup, aws_config, reveal_user};

fn logins() -> &'static str {
    concat!(
        r#"{"user_id":"c1","ip":"10.7.0.1","device_id":"dev-c1"}"#,
        "\n",
        r#"{"user_id":"c2","ip":"10.7.0.2","device_id":"dev-c2"}"#,
    )
}

/// `etl` as a fresh auditor login, signing with `signer`.
async fn auditor(s: &Setup, signer: &str) -> (String, Etl) {
    let (name, _, etl) = s.login_etl("piivault_auditor").await;
    (name, etl.with("PIIVAULT_AUDIT_SIGNER", signer))
}

/// Runs `etl audit checkpoint` and appends its line to `file`; returns the line as JSON.
async fn checkpoint(etl: &Etl, file: &Path) -> serde_json::Value {
    let run = etl.run(&["audit", "checkpoint"]).await;
    let line = run.assert_success().stdout.trim().to_owned();
    assert_eq!(line.lines().count(), 1, "one JSON line: {line}");
    let mut text = std::fs::read_to_string(file).unwrap_or_default();
    text.push_str(&line);
    text.push('\n');
    std::fs::write(file, text).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// As the table's owner with the append-only triggers off: deletes the newest audit row and
/// rewinds the server's head to the row before, so the chain still links and ends at the head.
async fn delete_newest_row(s: &Setup) {
    let mut owner = s.db.pool.acquire().await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "DELETE FROM vault.reveal_audit WHERE id = (SELECT max(id) FROM vault.reveal_audit)",
        "UPDATE vault.audit_head h SET id = a.id, hash = a.hash FROM vault.reveal_audit a
         WHERE a.id = (SELECT max(id) FROM vault.reveal_audit)",
        "RESET session_replication_role",
    ] {
        sqlx::query(sql).execute(&mut *owner).await.unwrap();
    }
}

fn verify_args(file: &Path) -> Vec<String> {
    vec![
        "audit".into(),
        "verify".into(),
        "--checkpoint".into(),
        file.display().to_string(),
    ]
}

async fn run_owned(etl: &Etl, args: &[String]) -> crate::support::Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    etl.run(&args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_signed_checkpoint_catches_a_deleted_newest_row_and_an_edited_line() {
    let s = Setup::new().await;
    s.load_lines(logins()).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = dir.path().join("signer.json");
    let signer_arg = signer.display().to_string();
    let init = s
        .etl
        .run(&["audit", "signer-init", "--output", &signer_arg])
        .await;
    assert!(
        init.assert_success()
            .stdout
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
    let pem = dir.path().join("signer.pub.pem");
    std::fs::write(&pem, &init.stdout).unwrap();
    let again = s
        .etl
        .run(&["audit", "signer-init", "--output", &signer_arg])
        .await;
    assert_eq!(again.code, 73, "never overwrites: {}", again.stderr);
    assert!(
        again.stderr.contains("never replaces a signer"),
        "{}",
        again.stderr
    );

    let (_name, etl) = auditor(&s, &format!("file:{signer_arg}")).await;
    etl.run(&reveal_user("c1", "checkpoint case one"))
        .await
        .assert_success();
    etl.run(&reveal_user("c2", "checkpoint case two"))
        .await
        .assert_success();
    let file = dir.path().join("checkpoints.jsonl");
    let first = checkpoint(&etl, &file).await;
    assert_eq!(first["head_id"], 2);
    assert_eq!(first["algorithm"], "ed25519");
    assert_eq!(first["deployment"], s.db.name);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("10.7.0") && !text.contains("dev-c"),
        "{text}"
    );
    etl.run(&reveal_user("c1", "checkpoint case three"))
        .await
        .assert_success();
    assert_eq!(checkpoint(&etl, &file).await["head_id"], 3);

    let ok = run_owned(&etl, &verify_args(&file)).await.json();
    assert_eq!(
        (
            ok["checkpoints"].as_i64(),
            ok["checkpoints_failed"].as_i64()
        ),
        (Some(2), Some(0))
    );
    // Offline trust: the saved public key, no signer and no KEK configured.
    let mut with_pem = verify_args(&file);
    with_pem.extend(["--public-key".into(), pem.display().to_string()]);
    let offline = etl
        .clone()
        .without("PIIVAULT_AUDIT_SIGNER")
        .without("PIIVAULT_KEK");
    run_owned(&offline, &with_pem).await.json();

    // The owner deletes the newest row and rewinds the head: the chain alone cannot tell...
    delete_newest_row(&s).await;
    let chain_only = etl.run(&["audit", "verify"]).await.json();
    assert_eq!(chain_only["broken"], 0);
    // ...the second checkpoint can; the first still holds.
    let caught = run_owned(&etl, &verify_args(&file)).await;
    assert_eq!(caught.code, 65, "{}", caught.stderr);
    assert_eq!(caught.json_line()["checkpoints_failed"], 1);
    assert!(
        caught.stderr.contains("checkpoint on line 2: signed at")
            && caught
                .stderr
                .contains("for row 3, but row 3 is gone: the trail now ends at row 2, so the newest rows were deleted"),
        "{}",
        caught.stderr
    );
    assert!(!caught.stderr.contains("line 1:"), "{}", caught.stderr);

    // An edited checkpoint: its signature no longer holds.
    let edited = dir.path().join("edited.jsonl");
    let line = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(&edited, line.replace(r#""head_id":2"#, r#""head_id":1"#)).unwrap();
    let forged = run_owned(&etl, &verify_args(&edited)).await;
    assert_eq!(forged.code, 65);
    assert!(
        forged
            .stderr
            .contains("checkpoint on line 1: its signature does not hold"),
        "{}",
        forged.stderr
    );
    // Another signer's checkpoint (a key an attacker made) is not trusted.
    let rogue = dir.path().join("rogue.json");
    let rogue_arg = rogue.display().to_string();
    s.etl
        .run(&["audit", "signer-init", "--output", &rogue_arg])
        .await
        .assert_success();
    let rogue_file = dir.path().join("rogue.jsonl");
    checkpoint(
        &etl.clone()
            .with("PIIVAULT_AUDIT_SIGNER", &format!("file:{rogue_arg}")),
        &rogue_file,
    )
    .await;
    let untrusted = run_owned(&etl, &verify_args(&rogue_file)).await;
    assert_eq!(untrusted.code, 65);
    assert!(
        untrusted
            .stderr
            .contains("signed by another key than the trusted one"),
        "{}",
        untrusted.stderr
    );
    // The signer file opens only under its KEK.
    let other_kek = crate::support::TestKek::new();
    let wrong = etl.clone().with("PIIVAULT_KEK", &other_kek.uri());
    let refused = wrong.run(&["audit", "checkpoint"]).await;
    assert_eq!(refused.code, 78);
    assert!(
        refused.stderr.contains("does not unwrap with PIIVAULT_KEK"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.stdout, "");

    // A broken chain is never signed.
    let mut owner = s.db.pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *owner)
        .await
        .unwrap();
    for sql in [
        "UPDATE vault.reveal_audit SET reason = 'nothing to see here' WHERE id = 1",
        "RESET session_replication_role",
    ] {
        sqlx::query(sql).execute(&mut *owner).await.unwrap();
    }
    drop(owner);
    let unsigned = etl.run(&["audit", "checkpoint"]).await;
    assert_eq!(unsigned.code, 65, "{}", unsigned.stderr);
    assert_eq!(unsigned.stdout, "");

    // Usage: a key to trust is needed; a missing file is named.
    let no_key = run_owned(&offline, &verify_args(&file)).await;
    assert_eq!(no_key.code, 64, "{}", no_key.stderr);
    let missing = run_owned(&etl, &verify_args(&dir.path().join("none.jsonl"))).await;
    assert_eq!(missing.code, 66, "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_signed_checkpoint_verifies_with_kms_or_its_public_key_alone() {
    use aws_sdk_kms::types::{KeySpec, KeyUsageType};
    let s = Setup::new().await;
    s.load_lines(logins()).await;
    let kms = aws_sdk_kms::Client::new(&aws_config().await);
    let key = kms
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .description("piivault test audit signer")
        .send()
        .await
        .unwrap();
    let key_id = key.key_metadata.unwrap().key_id;
    let (_name, etl) = auditor(&s, &format!("kms:{key_id}")).await;
    etl.run(&reveal_user("c1", "kms checkpoint case"))
        .await
        .assert_success();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints.jsonl");
    let line = checkpoint(&etl, &file).await;
    assert_eq!(line["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(line["signer"], format!("kms:{key_id}"));
    assert_eq!(line["head_id"], 1);
    run_owned(&etl, &verify_args(&file)).await.json();

    let pem = etl.run(&["audit", "public-key"]).await;
    let pem_file = dir.path().join("kms.pub.pem");
    std::fs::write(&pem_file, &pem.assert_success().stdout).unwrap();
    let mut offline = verify_args(&file);
    offline.extend(["--public-key".into(), pem_file.display().to_string()]);
    let without_kms = etl.clone().without("PIIVAULT_AUDIT_SIGNER");
    run_owned(&without_kms, &offline).await.json();

    etl.run(&reveal_user("c2", "kms checkpoint case two"))
        .await
        .assert_success();
    checkpoint(&etl, &file).await;
    delete_newest_row(&s).await;
    let caught = run_owned(&without_kms, &offline).await;
    assert_eq!(caught.code, 65, "{}", caught.stderr);
    assert!(caught.stderr.contains("row 2 is gone"), "{}", caught.stderr);

    // A symmetric key cannot sign: refused by name before anything is signed.
    let symmetric = crate::support::kms_kek().await;
    let unfit = etl
        .clone()
        .with("PIIVAULT_AUDIT_SIGNER", &symmetric)
        .run(&["audit", "checkpoint"])
        .await;
    assert_eq!(unfit.code, 78, "{}", unfit.stderr);
    assert!(
        unfit
            .stderr
            .contains("an audit signer must be an ECC_NIST_P256 key for SIGN_VERIFY"),
        "{}",
        unfit.stderr
    );
}
