//! A failover-style read-only database (SQLSTATE 25006) on a cluster the test starts itself:
//! `etl run` retries until writes are accepted again, and loses and doubles nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::support::{Setup, TempCluster, queue_depth, send};

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"user_id":"{prefix}-{i}","ip":"10.4.{}.{}","device_id":"dev-{prefix}-{i}","locale":"FR"}}"#, i / 250, i % 250))
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Turns `default_transaction_read_only` on or off for every session, as a failover to a
/// standby would make writes fail; existing sessions see it at their next transaction.
async fn set_read_only(admin: &PgPool, on: bool) {
    let value = if on { "on" } else { "off" };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER SYSTEM SET default_transaction_read_only = {value}"
    )))
    .execute(admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_database_is_retried_until_writable_and_nothing_is_lost() {
    let cluster = TempCluster::start();
    let s = Setup::builder()
        .cluster(&cluster)
        .visibility(10)
        .build()
        .await;
    let (queue_url, etl) = (&*s.queue, s.etl.clone());
    // The admin session asks for read-write at connect: a client setting outranks the reloaded
    // configuration, so it can always turn read-only off again.
    let options: PgConnectOptions = s.db.url.parse().unwrap();
    let admin = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options.options([("default_transaction_read_only", "off")]))
        .await
        .unwrap();

    let before = 300;
    send(queue_url, &bodies("before", before)).await;
    // A lock on user_logins holds the first batch back, so the run cannot finish before the
    // database turns read-only.
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut child = etl.spawn(&[
        "run",
        "--drain",
        "--wait-time-secs",
        "1",
        "--concurrency",
        "2",
        "--writers",
        "2",
        "--batch-size",
        "50",
        "--visibility-timeout-secs",
        "5",
        "--max-outage-secs",
        "120",
    ]);
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let collected = stderr.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut all = collected.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    let mut stdout = child.stdout.take().unwrap();

    let waiting_sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'";
    let until = Instant::now() + Duration::from_secs(60);
    while count(&admin, waiting_sql).await == 0 {
        assert!(
            Instant::now() < until,
            "no batch waited on the lock: {}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_read_only(&admin, true).await;
    lock.rollback().await.unwrap();
    let during = 100;
    send(queue_url, &bodies("during", during)).await;

    // The run must be retrying the read-only refusal, not failing or hanging silently.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = stderr.lock().unwrap().clone();
        if seen.contains("SQLSTATE 25006") {
            assert!(seen.contains("read-only"), "the warning says why: {seen}");
            break;
        }
        assert!(
            Instant::now() < until,
            "no retry warning naming the read-only database: {seen}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "etl run ended while the database was read-only: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Batches begun before the switch may still commit: count once they have.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded_while_read_only = count(&admin, "SELECT count(*) FROM user_logins").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "etl run kept retrying while the database was read-only: {}",
        stderr.lock().unwrap()
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM user_logins").await,
        loaded_while_read_only,
        "nothing is written while the database is read-only"
    );
    set_read_only(&admin, false).await;

    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("etl run finishes once the database is writable again")
        .unwrap();
    reader.await.unwrap();
    let mut summary = String::new();
    stdout.read_to_string(&mut summary).await.unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(summary.trim())
        .unwrap_or_else(|e| panic!("summary {summary:?}: {e}; {stderr}"));
    let total = (before + during) as i64;
    assert_eq!(summary["loaded"], total, "{summary}");
    assert_eq!(summary["quarantined"], 0, "{summary}");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM user_logins").await,
        total
    );
    assert_eq!(
        count(&admin, "SELECT count(DISTINCT message_id) FROM user_logins").await,
        total,
        "each message exactly once"
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM etl.quarantine").await,
        0
    );
    assert_eq!(queue_depth(queue_url).await, 0, "every message deleted");
    admin.close().await;
}
