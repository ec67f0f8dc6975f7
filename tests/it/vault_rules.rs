//! The vault's rules hold for a login with nothing but SQL (issue 14): each test attacks one
//! rule as a documented role, the way someone with `psql` would, and shows the refusal.

use sqlx::PgPool;

use crate::support::{DENIED, Setup, VIEW_NOT_WRITABLE, attempt, reveal_user};

/// Two users sharing one device, and one user alone on another.
const SHARED: &str = "{\"user_id\":\"g1\",\"ip\":\"10.0.0.1\",\"device_id\":\"dev-g\"}\n\
                      {\"user_id\":\"g2\",\"ip\":\"10.0.0.2\",\"device_id\":\"dev-g\"}\n\
                      {\"user_id\":\"g1\",\"ip\":\"10.0.0.1\",\"device_id\":\"dev-solo\"}\n";

async fn load_shared(s: &Setup) {
    s.load_lines(SHARED).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_values_leave_the_database_only_through_the_audited_reveal() {
    let s = Setup::new().await;
    load_shared(&s).await;
    let (auditor, auditor_url) = s.login("piivault_auditor").await;
    let (_etl, etl_url) = s.login("piivault_etl").await;
    let (_analyst, analyst_url) = s.login("piivault_analyst").await;
    let (_admin, admin_url) = s.login("piivault_admin").await;

    // Direct reads of sealed values: refused for every role but the owner.
    for (who, url) in [
        ("auditor", &auditor_url),
        ("etl", &etl_url),
        ("analyst", &analyst_url),
        ("admin", &admin_url),
    ] {
        for sql in [
            "SELECT ip_sealed FROM vault.login_pii",
            "SELECT device_id_sealed FROM vault.login_pii",
            "SELECT body_sealed FROM etl.quarantine",
        ] {
            assert_eq!(attempt(url, sql).await, DENIED, "{who}: {sql}");
        }
    }
    // Nor may the admin delete a user's originals or rows outside vault.erase_user(), which
    // writes the audit row with the deletion.
    for sql in [
        "DELETE FROM vault.login_pii WHERE user_id = 'g1'",
        "DELETE FROM etl.logins WHERE user_id = 'g1'",
    ] {
        assert_eq!(attempt(&admin_url, sql).await, DENIED, "admin: {sql}");
    }
    assert_eq!(
        attempt(&admin_url, "DELETE FROM user_logins WHERE user_id = 'g1'").await,
        VIEW_NOT_WRITABLE
    );
    // Only the auditor may call the reveal functions.
    let call = "SELECT * FROM vault.reveal_request('user_id', 'g1', 'fraud-investigation', 'direct SQL attempt', NULL, 'mallory')";
    assert_eq!(attempt(&etl_url, call).await, DENIED);
    assert_eq!(attempt(&analyst_url, call).await, DENIED);
    assert_eq!(attempt(&admin_url, call).await, DENIED);
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.reveal_audit").await,
        0
    );

    // Reading in the transaction that requested, then rolling the audit row back: refused, so
    // nothing is read and nothing needs recording.
    let pool = PgPool::connect(&auditor_url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let (audit_id,): (i64,) = sqlx::query_as(
        "SELECT audit_id FROM vault.reveal_request('user_id', 'g1', 'fraud-investigation', 'read then roll back', NULL, 'mallory')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let read = sqlx::query("SELECT * FROM vault.reveal_rows($1)")
        .bind(audit_id)
        .execute(&mut *tx)
        .await;
    assert!(
        matches!(&read, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(DENIED)),
        "{read:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.reveal_audit").await,
        0
    );
    // A reason of whitespace is no reason.
    assert_eq!(
        attempt(
            &auditor_url,
            "SELECT * FROM vault.reveal_request('user_id', 'g1', 'fraud-investigation', E'\\t\\t\\t\\t\\t\\t\\t\\t\\t', NULL, 'x')"
        )
        .await,
        "22023"
    );

    // The auditor's own SQL: the request commits the audit row the server wrote (its login,
    // whose records, a digest of which); only then does a second statement return the rows,
    // once.
    let token: String = sqlx::query_scalar(
        "SELECT masked_device_id FROM user_logins WHERE device_type IS NULL AND user_id = 'g2'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    let (audit_id, records): (i64, i32) = sqlx::query_as(
        "SELECT audit_id, records FROM vault.reveal_request('token', $1, 'fraud-investigation', 'duplicate device case', 'T-9', 'mallory')",
    )
    .bind(&token)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(records, 2);
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, user_id FROM vault.reveal_rows($1)")
            .bind(audit_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let again = sqlx::query("SELECT * FROM vault.reveal_rows($1)")
        .bind(audit_id)
        .execute(&pool)
        .await;
    assert!(again.is_err(), "a grant serves once");
    pool.close().await;
    assert_eq!(rows.len(), 2);
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    type Audit = (
        i64,
        String,
        String,
        Option<Vec<String>>,
        i32,
        Option<Vec<u8>>,
        i16,
    );
    let audit: Audit = sqlx::query_as(
        "SELECT id, db_role, actor, subjects, records, records_digest, chain_format FROM vault.reveal_audit",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(audit.0, audit_id);
    assert_eq!(
        audit.1, auditor,
        "db_role is the session's login, set by the server"
    );
    assert_eq!(
        audit.2, "mallory",
        "the OS account is the client's word, kept apart"
    );
    assert_eq!(
        audit.3,
        Some(vec!["g1".to_owned(), "g2".to_owned()]),
        "a token reveal names whose data it showed"
    );
    assert_eq!(audit.4, 2);
    assert_eq!(
        audit.5.as_deref(),
        Some(&piivault::crypto::chain::records_digest(ids)[..]),
        "the server's digest is the one etl recomputes"
    );
    assert_eq!(
        audit.6, 3,
        "rows carry the governance fields since migration 0014"
    );
    s.etl.run(&["audit", "verify"]).await.json();
}

/// Starts (and commits) a key job as the pool's login, the way psql would.
async fn job_begin(pool: &PgPool, action: &str, reason: &str) -> i64 {
    sqlx::query_scalar("SELECT vault.job_begin($1, 'by hand', $2, 'mallory')")
        .bind(action)
        .bind(reason)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn key_jobs_read_sealed_values_only_inside_an_audited_job_of_their_own() {
    let s = Setup::new().await;
    load_shared(&s).await;
    let (admin, admin_url) = s.login("piivault_admin").await;
    let (_other, other_url) = s.login("piivault_admin").await;
    let (_auditor, auditor_url) = s.login("piivault_auditor").await;
    let page = |job: i64| format!("SELECT * FROM vault.job_vault_rows({job}, 'all', NULL, '', 10)");

    // No job, an invented job, another login's job: refused. The auditor may not start one.
    assert_eq!(attempt(&admin_url, &page(1)).await, DENIED);
    assert_eq!(
        attempt(
            &auditor_url,
            "SELECT vault.job_begin('verify', 'all', 'sneaky verify run', 'x')"
        )
        .await,
        DENIED
    );
    let pool = PgPool::connect(&admin_url).await.unwrap();
    // A job read in the transaction that began it (then rolled back, with its audit row): refused.
    let mut tx = pool.begin().await.unwrap();
    let uncommitted: i64 = sqlx::query_scalar(
        "SELECT vault.job_begin('verify', 'all sealed values', 'read then roll back', 'mallory')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let read = sqlx::query(sqlx::AssertSqlSafe(page(uncommitted)))
        .execute(&mut *tx)
        .await;
    assert!(
        matches!(&read, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(DENIED)),
        "{read:?}"
    );
    tx.rollback().await.unwrap();
    // A job reads only what its action needs: an erase job (which counts untagged bodies only)
    // never reads the vault.
    let erase_job = job_begin(&pool, "erase", "erasure request 5").await;
    assert_eq!(
        attempt(&admin_url, &page(erase_job)).await,
        DENIED,
        "erase job"
    );
    // Counting what re-encryption has left is no oracle on sealed bytes: the marker is fixed.
    assert_eq!(
        attempt(
            &admin_url,
            "SELECT * FROM vault.count_not_sealed_at(1, '\\x00')"
        )
        .await,
        "42883"
    );
    // The admin writes only the columns its jobs write.
    for sql in [
        "UPDATE vault.login_pii SET user_id = 'decoy'",
        "UPDATE etl.logins SET user_id = 'decoy'",
    ] {
        assert_eq!(attempt(&admin_url, sql).await, DENIED, "{sql}");
    }
    assert_eq!(
        attempt(&admin_url, "UPDATE user_logins SET user_id = 'decoy'").await,
        VIEW_NOT_WRITABLE
    );
    let job = job_begin(&pool, "verify", "manual check by psql").await;
    assert_eq!(
        attempt(&other_url, &page(job)).await,
        DENIED,
        "another login's job"
    );
    // The admin's own job reads, and its audit row (with the rows in scope) is already there.
    let rows: Vec<(String, Option<Vec<u8>>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT message_id, ip_sealed FROM vault.job_vault_rows({job}, 'all', NULL, '', 10)"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let (action, db_role, records): (String, String, i32) = sqlx::query_as(
        "SELECT action, db_role, records FROM vault.reveal_audit ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (action.as_str(), db_role.as_str(), records),
        ("verify", admin.as_str(), 3)
    );
    // An ended job serves nothing more.
    sqlx::query("SELECT vault.job_end($1)")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(attempt(&admin_url, &page(job)).await, DENIED, "ended job");

    // The real key jobs, run as the admin login, each leave their row.
    let etl = s.etl.clone().with("DATABASE_URL", &admin_url);
    etl.run(&["keys", "verify"]).await.json();
    etl.run(&["keys", "rotate", "--purpose", "seal"])
        .await
        .json();
    etl.run(&["keys", "reencrypt"]).await.json();
    etl.run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    etl.run(&["keys", "retokenize"]).await.json();
    etl.run(&["quarantine", "replay", "--all"]).await.json();
    etl.run(&["erase", "--user-id", "g2", "--reason", "erasure request 12"])
        .await
        .json();
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM vault.reveal_audit WHERE db_role = $1 ORDER BY id")
            .bind(&admin)
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            "erase",
            "verify",
            "verify",
            "reencrypt",
            "retokenize",
            "replay",
            "erase"
        ]
    );
    s.etl.run(&["audit", "verify"]).await.json();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_role_can_forge_jam_edit_or_erase_the_audit_trail() {
    let s = Setup::new().await;
    load_shared(&s).await;
    let roles = [
        "piivault_etl",
        "piivault_analyst",
        "piivault_auditor",
        "piivault_admin",
    ];
    let mut logins = Vec::new();
    for role in roles {
        logins.push((role, s.login(role).await));
    }
    // One genuine row to attack.
    s.etl
        .run(&reveal_user("g1", "baseline reveal"))
        .await
        .assert_success();

    for (role, (_, url)) in &logins {
        for sql in [
            // A back-dated row "by somebody else", with a chosen hash.
            "INSERT INTO vault.reveal_audit (id, at, db_role, actor, reason, records, chain_format, hash)
             VALUES (2, '2020-01-01', 'someone_else', 'x', 'back-dated row', 1, 2, '\\x00')",
            // Ids ahead of the chain, to jam every later append.
            "INSERT INTO vault.reveal_audit (id, actor, reason, records, chain_format) VALUES (1000, 'x', 'jam the ids', 1, 2)",
            "SELECT nextval('vault.reveal_audit_id_seq')",
            "SELECT setval('vault.reveal_audit_id_seq', 1000)",
            "UPDATE vault.audit_head SET id = 1000",
            // The internal append, which would take any action.
            "SELECT vault.audit_write('reveal', 'user_id=g1', 'g1', NULL, 'forged reveal row', 'x', 1, NULL, NULL)",
            "UPDATE vault.reveal_audit SET reason = 'nothing to see'",
            "DELETE FROM vault.reveal_audit",
            "TRUNCATE vault.reveal_audit",
        ] {
            assert_eq!(attempt(url, sql).await, DENIED, "{role}: {sql}");
        }
    }
    let admin_url = &logins[3].1.1;
    let auditor_url = &logins[2].1.1;
    // Rows come only with what they record: a reveal, a job, an erasure. No role may append a
    // free-standing row ("an erasure happened") that the data contradicts.
    for (who, url) in [("admin", admin_url), ("auditor", auditor_url)] {
        for action in ["reveal", "erase"] {
            let sql = format!(
                "SELECT vault.audit_append('{action}', 'user_id=g1', 'g1', NULL, 'a forged row here', 'x', 1, NULL, NULL)"
            );
            assert_eq!(attempt(url, &sql).await, DENIED, "{who}: {action}");
        }
    }
    // The admin's functions are the admin's alone; one auditor cannot use another's reveal.
    for (role, (_, url)) in &logins[..3] {
        for sql in [
            "SELECT * FROM vault.erase_user('g1', '{}', '{}', NULL, 'erasure by someone', NULL, 'x')",
            "SELECT vault.lock_for_key_job('sealed')",
            "SELECT vault.rewrite_data_keys()",
            "SELECT * FROM vault.count_not_sealed_at(1)",
            "SELECT vault.job_begin('verify', 'all', 'a job by someone', 'x')",
        ] {
            assert_eq!(attempt(url, sql).await, DENIED, "{role}: {sql}");
        }
    }
    assert_eq!(attempt(admin_url, "TRUNCATE vault.data_keys").await, DENIED);
    let (_other_auditor, other_url) = s.login("piivault_auditor").await;
    let mine: i64 = sqlx::query_scalar(
        "SELECT audit_id FROM vault.reveal_request('user_id', 'g1', 'fraud-investigation', 'my own reveal', NULL, 'x')",
    )
    .fetch_one(&PgPool::connect(auditor_url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(
        attempt(
            &other_url,
            &format!("SELECT * FROM vault.reveal_rows({mine})")
        )
        .await,
        DENIED,
        "another auditor's grant"
    );

    // The owner too is refused by the append-only rule (it must switch the rule off on purpose).
    for sql in [
        "UPDATE vault.reveal_audit SET reason = 'owner edit'",
        "DELETE FROM vault.reveal_audit",
        "TRUNCATE vault.reveal_audit",
        "INSERT INTO vault.reveal_audit (id, actor, reason, records, chain_format) VALUES (99, 'x', 'owner insert', 1, 2)",
    ] {
        assert_eq!(attempt(&s.db.url, sql).await, DENIED, "owner: {sql}");
    }
    // A legitimate erasure still appends and takes the next id: nothing was jammed.
    s.etl
        .clone()
        .with("DATABASE_URL", admin_url)
        .run(&[
            "erase",
            "--user-id",
            "nobody",
            "--reason",
            "erasure request 7",
        ])
        .await
        .json();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM vault.reveal_audit ORDER BY id")
        .fetch_all(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(
        ids,
        [1, 2, 3],
        "the baseline, the request above, the erasure"
    );
    let verified = s.etl.run(&["audit", "verify"]).await.json();
    assert_eq!(verified["broken"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn definer_functions_cannot_be_hijacked_through_schema_public() {
    let s = Setup::new().await;
    load_shared(&s).await;
    // The definer functions belong to a NOLOGIN, non-superuser role and pin their path.
    let functions: Vec<(String, String, bool, Vec<String>)> = sqlx::query_as(
        "SELECT p.proname::text, p.proowner::regrole::text, p.prosecdef, coalesce(p.proconfig, '{}')
         FROM pg_proc p WHERE p.prosecdef AND p.pronamespace::regnamespace::text IN ('vault', 'public')
         ORDER BY 1",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    let names: Vec<&str> = functions.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "active_token_version",
            "assign_token_slot",
            "audit_append",
            "audit_key_change",
            "audit_record",
            "audit_write",
            "count_not_sealed_at",
            "erase_user",
            "job_begin",
            "job_end",
            "job_quarantine_rows",
            "job_token_fill_rows",
            "job_untagged_bodies",
            "job_vault_rows",
            "lock_for_key_job",
            "policy_set",
            "refresh_shared_tokens",
            "reveal_approve",
            "reveal_ask",
            "reveal_execute",
            "reveal_grant",
            "reveal_pending",
            "reveal_refusal",
            "reveal_request",
            "reveal_rows",
            "reveal_select",
            "rewrite_data_keys",
            "rows_missing_slot",
            "shared_tokens",
            "shared_tokens_state",
            "shared_tokens_summary",
            "show_token_slot",
            "token_key_activated"
        ]
    );
    for (name, owner, _, config) in &functions {
        assert_eq!(owner, "piivault_definer", "{name}");
        assert_eq!(
            config.first().map(String::as_str),
            Some("search_path=pg_catalog, pg_temp"),
            "{name}"
        );
    }
    let (login, superuser): (bool, bool) = sqlx::query_as(
        "SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'piivault_definer'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert!(!login && !superuser);

    // A database where PUBLIC may create in public (before PostgreSQL 15, or re-granted):
    // `etl migrate` takes the privilege back and says so.
    sqlx::query("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let migrated = s.etl.run(&["migrate"]).await;
    migrated.assert_success();
    assert!(
        migrated
            .stderr
            .contains("revoked CREATE on schema public from PUBLIC"),
        "{}",
        migrated.stderr
    );
    let (etl, etl_url) = s.login("piivault_etl").await;
    assert_eq!(
        attempt(&etl_url, "CREATE TABLE public.planted (x int)").await,
        DENIED
    );

    // Grant it again and plant a look-alike count(varchar): an exact type match that beats
    // pg_catalog.count("any") for a function whose path includes public.
    sqlx::query("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .execute(&s.db.pool)
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE public.hijacked (as_role text)",
        "GRANT INSERT ON public.hijacked TO PUBLIC",
        "CREATE FUNCTION public.plant(bigint, varchar) RETURNS bigint LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.hijacked VALUES (current_user); RETURN 424242; END $$",
        "CREATE AGGREGATE public.count(varchar) (SFUNC = public.plant, STYPE = bigint, INITCOND = '0')",
    ] {
        assert_eq!(attempt(&etl_url, sql).await, "ok", "{sql}");
    }
    let groups: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT token, users, logins FROM shared_tokens('device', 2, 10)")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].1, groups[0].2),
        (2, 2),
        "pg_catalog.count, not the plant"
    );
    // The summary's build counts with pg_catalog too.
    assert_eq!(
        attempt(&etl_url, "SELECT refresh_shared_tokens(NULL)").await,
        "ok"
    );
    let summary: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT token, users, logins FROM shared_tokens_summary('device', 2, 10)")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(summary, groups, "the summary agrees with the live count");
    assert_eq!(
        s.db.count("SELECT count(*) FROM public.hijacked").await,
        0,
        "the planted aggregate never ran"
    );

    // It never lists a token only one user has, nor more than 1,000 groups.
    let singles =
        s.db.count("SELECT count(*) FROM shared_tokens('device', 1, 100000) WHERE users < 2")
            .await;
    assert_eq!(singles, 0);

    sqlx::query(sqlx::AssertSqlSafe(format!("DROP OWNED BY {etl}")))
        .execute(&s.db.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_forges_or_reads_the_shared_token_summary_around_its_functions() {
    let s = Setup::new().await;
    load_shared(&s).await;
    s.etl.run(&["report", "refresh"]).await.assert_success();
    let mut roles = Vec::new();
    for role in [
        "piivault_etl",
        "piivault_analyst",
        "piivault_auditor",
        "piivault_admin",
    ] {
        roles.push((role, s.login(role).await.1));
    }
    for (role, url) in &roles {
        for sql in [
            "SELECT * FROM etl.shared_tokens",
            "INSERT INTO etl.shared_tokens VALUES ('device', 'v1:forged', 99, 99)",
            "UPDATE etl.shared_tokens SET users = 99",
            "DELETE FROM etl.shared_tokens",
            "TRUNCATE etl.shared_tokens",
            "UPDATE etl.shared_tokens_state SET refreshed_at = now() + interval '1 day'",
            "DELETE FROM etl.shared_tokens_state",
        ] {
            assert_eq!(attempt(url, sql).await, DENIED, "{role}: {sql}");
        }
    }
    // The ETL role (status page) and analysts read it through the bounded functions and may
    // rebuild it; the auditor and the key administrator have no use for it.
    for (role, url) in &roles {
        let want = if ["piivault_etl", "piivault_analyst"].contains(role) {
            "ok"
        } else {
            DENIED
        };
        for sql in [
            "SELECT * FROM shared_tokens_summary('device', 2, 10)",
            "SELECT * FROM shared_tokens_state()",
            "SELECT refresh_shared_tokens(NULL)",
        ] {
            assert_eq!(attempt(url, sql).await, want, "{role}: {sql}");
        }
    }
    // Its bounds hold whatever the caller asks: never a single user's token, never more than
    // 1,000 groups, and a build always counts what user_logins holds.
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM shared_tokens_summary('device', 1, 100000) WHERE users < 2"
        )
        .await,
        0
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM shared_tokens_summary('device', 2, 10)")
            .await,
        1,
        "dev-g, two users"
    );
}

/// The unwrapped v1 seal and token keys of a test database (what a format-1 writer held).
async fn v1_keys(s: &Setup) -> ([u8; 32], piivault::crypto::TokenKey) {
    use piivault::crypto::{KeyVersion, Purpose, TokenKey};
    let kek = piivault::kek::Kek::open(&s.kek.uri().parse().unwrap())
        .await
        .unwrap();
    let rows = piivault::store::keys::list(&s.db.pool).await.unwrap();
    let mut seal = [0u8; 32];
    let mut token = None;
    for row in &rows {
        let key = piivault::keystore::unwrap_row(&kek, row)
            .await
            .unwrap()
            .unwrap();
        match key.purpose {
            Purpose::Seal => seal.copy_from_slice(&key.plain),
            Purpose::Token => token = TokenKey::from_unwrapped(KeyVersion(1), &key.plain),
        }
    }
    (seal, token.unwrap())
}

/// A value sealed exactly as piivault did before format 2: AAD `message_id 0 field 0 1`.
fn seal_v1(key: &[u8; 32], message_id: &str, field: &str, plain: &str) -> Vec<u8> {
    let mut out = 1u32.to_be_bytes().to_vec();
    let aad = format!("{message_id}\0{field}\01");
    piivault::crypto::aead::encrypt_into(&mut out, key, aad.as_bytes(), plain.as_bytes());
    out
}

/// Stores one login the way a format-1 writer did.
async fn insert_v1_login(
    s: &Setup,
    keys: &([u8; 32], piivault::crypto::TokenKey),
    row: (&str, &str, &str, &str),
) {
    use piivault::crypto::Field;
    let (message_id, user_id, ip, device) = row;
    sqlx::query(
        "INSERT INTO etl.logins (message_id, user_id, ip_token_a, device_token_a, token_version_a)
         VALUES ($1, $2, $3, $4, 1)",
    )
    .bind(message_id)
    .bind(user_id)
    .bind(keys.1.token(Field::Ip, ip).as_str())
    .bind(keys.1.token(Field::DeviceId, device).as_str())
    .execute(&s.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO vault.login_pii (message_id, user_id, key_version, ip_sealed, device_id_sealed)
         VALUES ($1, $2, 1, $3, $4)",
    )
    .bind(message_id)
    .bind(user_id)
    .bind(seal_v1(&keys.0, message_id, "ip", ip))
    .bind(seal_v1(&keys.0, message_id, "device_id", device))
    .execute(&s.db.pool)
    .await
    .unwrap();
}

async fn swap_vault_users(s: &Setup, a: &str, b: &str) {
    sqlx::query(
        "UPDATE vault.login_pii SET user_id = CASE user_id WHEN $1 THEN $2 ELSE $1 END
         WHERE user_id IN ($1, $2)",
    )
    .bind(a)
    .bind(b)
    .execute(&s.db.pool)
    .await
    .unwrap();
}

async fn reveal(s: &Setup, user: &str) -> crate::support::Run {
    s.etl.run(&reveal_user(user, "binding check")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn seals_bind_their_user_and_older_seals_move_to_the_new_format() {
    let s = Setup::new().await;
    let keys = v1_keys(&s).await;
    insert_v1_login(&s, &keys, ("legacy-a", "old-a", "10.9.9.9", "dev-a")).await;
    insert_v1_login(&s, &keys, ("legacy-b", "old-b", "10.8.8.8", "dev-b")).await;

    // Format-1 values open by their marker (none): the upgrade loses nothing.
    let before = reveal(&s, "old-a").await;
    before.assert_success();
    assert!(before.stdout.contains("10.9.9.9"), "{}", before.stdout);
    s.etl.run(&["keys", "verify"]).await.json();

    // A vault user swapped under format 1: verify sees it against user_logins, and reencrypt
    // refuses to make the swapped user authentic.
    swap_vault_users(&s, "old-a", "old-b").await;
    let verify = s.etl.run(&["keys", "verify"]).await;
    assert_eq!(verify.code, 65, "{}", verify.stderr);
    assert!(
        verify
            .stderr
            .contains("user_id differs from its user_logins row")
    );
    let refused = s.etl.run(&["keys", "reencrypt"]).await;
    assert_eq!(refused.code, 65, "{}", refused.stderr);
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii WHERE substring(ip_sealed FROM 1 FOR 2) = '\\xff02'")
            .await,
        0
    );
    swap_vault_users(&s, "old-a", "old-b").await;

    // Re-encryption moves both to format 2, at the same key version.
    let moved = s.etl.run(&["keys", "reencrypt"]).await.json();
    assert_eq!(
        (moved["vault"].as_u64(), moved["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM vault.login_pii
             WHERE substring(ip_sealed FROM 1 FOR 2) = '\\xff02' AND key_version = 1"
        )
        .await,
        2
    );
    assert_eq!(
        s.etl.run(&["keys", "reencrypt"]).await.json()["reencrypted"],
        0
    );
    s.etl.run(&["keys", "verify"]).await.json();

    // Now the user is inside the seal: swapping user_id makes reveal report an integrity error
    // and print neither value under the wrong name; verify fails too.
    swap_vault_users(&s, "old-a", "old-b").await;
    let swapped = reveal(&s, "old-a").await;
    assert_eq!(swapped.code, 65, "{}", swapped.stderr);
    assert!(!swapped.stdout.contains("10.8.8.8") && !swapped.stdout.contains("dev-b"));
    assert!(
        swapped.stderr.contains("integrity error"),
        "{}",
        swapped.stderr
    );
    let verify = s.etl.run(&["--log-format", "json", "keys", "verify"]).await;
    assert_eq!(verify.code, 65);
    // Each finding is one JSON object on its own line, naming the message, never a value.
    let events: Vec<serde_json::Value> = verify
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let findings: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["level"] == "ERROR" && e["message_id"].is_string())
        .collect();
    assert!(findings.len() >= 2, "{}", verify.stderr);
    assert!(
        events
            .iter()
            .any(|e| e["exit_code"] == 65 && e["level"] == "ERROR"),
        "the fatal error too: {}",
        verify.stderr
    );
    assert!(!verify.stderr.contains("10.8.8.8") && !verify.stderr.contains("10.9.9.9"));
}

/// The key table's file as it is on disk (after a checkpoint), with its path.
async fn key_table_file(s: &Setup) -> (String, Vec<u8>) {
    sqlx::query("CHECKPOINT").execute(&s.db.pool).await.unwrap();
    sqlx::query_as(
        "SELECT pg_relation_filepath('vault.data_keys'), pg_read_binary_file(pg_relation_filepath('vault.data_keys'))",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap()
}

/// Whether the file at `path` (relative to the data directory; may be gone) holds `needle`.
async fn file_holds(s: &Setup, path: &str, needle: &[u8]) -> bool {
    let bytes: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT pg_read_binary_file($1, 0, 1000000000, true)")
            .bind(path)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    bytes.is_some_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

async fn wrapped(s: &Setup, purpose: &str, version: i32) -> Vec<u8> {
    sqlx::query_scalar("SELECT wrapped FROM vault.data_keys WHERE purpose = $1 AND version = $2")
        .bind(purpose)
        .bind(version)
        .fetch_one(&s.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn retire_and_rewrap_leave_no_old_wrapped_key_in_the_table_files() {
    let s = Setup::new().await;
    let (admin, admin_url) = s.login("piivault_admin").await;
    let etl = s.etl.clone().with("DATABASE_URL", &admin_url);
    etl.run(&["keys", "rotate", "--purpose", "seal"])
        .await
        .json();

    // Retire, as the documented admin login (not the table's owner).
    let old = wrapped(&s, "seal", 1).await;
    let (before_path, before) = key_table_file(&s).await;
    assert!(
        before.windows(old.len()).any(|w| w == old),
        "the check can see a wrapped key in the file"
    );
    etl.run(&["keys", "retire", "--purpose", "seal", "--version", "1"])
        .await
        .json();
    let (after_path, after) = key_table_file(&s).await;
    assert!(
        !after.windows(old.len()).any(|w| w == old),
        "retired key still in {after_path}"
    );
    assert!(
        !file_holds(&s, &before_path, &old).await,
        "retired key left in the old file"
    );
    // The change of key material is audited by the database, under the admin's login.
    let (action, selector, db_role): (String, String, String) = sqlx::query_as(
        "SELECT action, selector, db_role FROM vault.reveal_audit ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (action.as_str(), selector.as_str(), db_role.as_str()),
        ("retire", "seal key v1", admin.as_str())
    );

    // Rewrap to another KEK: no key wrapped under the old one stays behind.
    let superseded = [wrapped(&s, "seal", 2).await, wrapped(&s, "token", 1).await];
    let next = crate::support::TestKek::new();
    let (rewrap_path, _) = key_table_file(&s).await;
    etl.run(&["keys", "rewrap", "--to-kek", &next.uri()])
        .await
        .json();
    let (now_path, now) = key_table_file(&s).await;
    for old in &superseded {
        assert!(
            !now.windows(old.len()).any(|w| w == old),
            "superseded wrap in {now_path}"
        );
        assert!(!file_holds(&s, &rewrap_path, old).await);
    }
    // The keys still open everything under the new KEK.
    s.etl
        .clone()
        .with("PIIVAULT_KEK", &next.uri())
        .run(&["keys", "verify"])
        .await
        .json();
}

#[tokio::test(flavor = "multi_thread")]
async fn erase_finds_every_quarantined_body_that_names_the_user() {
    let s = Setup::new().await;
    let deep = format!(
        "{}{{\"user_id\":\"victim\"}}{}",
        "[".repeat(130),
        "]".repeat(130)
    );
    let victim_bodies = [
        "{\"user_id\":\"victim\",\"ip\":\"10.7",
        "{\"user_id\":\"victim\",\"ip\":\"10.7.7.7\"} trailing",
        "{\"ip\":\"10.7.7.8\",\"user_id\":\"other\",\"user_id\":\"victim\"}",
        "[{\"user_id\":\"victim\",\"device_id\":\"dev-v\"}]",
        &deep,
        "{\"user\\u005fid\":\"vi\\u0063tim\",\"ip\":\"999.1.1.1\"}",
        "{\"user_id\":\"victim\",\"app_version\":7}",
    ];
    let mut lines = vec![
        "{\"user_id\":\"bystander\",\"app_version\":3}".to_owned(),
        "{\"user_id\":\"bystander\",\"note\":\"victim\",\"app_version\":4}".to_owned(),
    ];
    lines.extend(victim_bodies.iter().map(|b| b.to_string()));
    let loaded = s.load_lines(&(lines.join("\n") + "\n")).await;
    assert_eq!(loaded["quarantined"], lines.len() as u64, "{loaded}");

    // One victim body quarantined before tags existed, and one untagged body whose seal no
    // longer opens: erase opens the first in an audited job and counts the second.
    let victim_ids: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM etl.quarantine WHERE cardinality(user_tags) > 0 ORDER BY message_id",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE etl.quarantine SET user_tags = NULL WHERE message_id = $1")
        .bind(&victim_ids[0])
        .execute(&s.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO etl.quarantine (message_id, received_at, reason, key_version, body_sealed)
         VALUES ('broken', now(), 'test', 1, '\\xff0200000001deadbeef')",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();

    let erased = s
        .etl
        .run(&[
            "erase",
            "--user-id",
            "victim",
            "--reason",
            "erasure request 31",
        ])
        .await
        .json();
    assert_eq!(
        erased["erased"]["quarantine"],
        victim_bodies.len() as u64,
        "{erased}"
    );
    assert_eq!(erased["unreadable_bodies"], 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM etl.quarantine ORDER BY message_id")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(
        left.len(),
        3,
        "two bystander bodies and the broken one: {left:?}"
    );
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT action, selector, records FROM vault.reveal_audit ORDER BY id")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2),
        ("erase", 2),
        "the scan of the two untagged bodies, audited first"
    );
    assert!(
        rows[1]
            .1
            .contains("1 quarantined bodies could not be opened"),
        "{rows:?}"
    );
    assert_eq!(rows[1].2, victim_bodies.len() as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_holding_the_audit_head_stalls_an_audited_command_5_s_at_most() {
    let s = Setup::new().await;
    load_shared(&s).await;
    let mut held = s.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM vault.audit_head FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let stalled = s.etl.run(&reveal_user("g1", "held head check")).await;
    let took = started.elapsed();
    held.rollback().await.unwrap();
    assert_eq!(stalled.code, 75, "temporary, retry: {}", stalled.stderr);
    assert_eq!(stalled.stdout, "", "nothing revealed");
    assert!(
        took >= std::time::Duration::from_secs(5) && took < std::time::Duration::from_secs(15),
        "{took:?}"
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.reveal_audit").await,
        0
    );
    s.etl
        .run(&reveal_user("g1", "held head check"))
        .await
        .assert_success();
}
