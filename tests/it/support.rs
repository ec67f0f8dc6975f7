//! Test harness: checks once that the local stack answers (it never installs or starts it: that
//! is `scripts/stack.sh up`, run by `scripts/test.sh`), then gives each test its own database,
//! queue, logins and key-encryption key, released on drop, and runs the real `etl` binary.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DEFAULTS: [(&str, &str); 6] = [
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    (
        "PIIVAULT_PG_ADMIN_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    ),
];

/// Fails at once, naming the command to run, unless the local stack answers: Postgres at
/// `PIIVAULT_PG_ADMIN_URL` and the emulator at `AWS_ENDPOINT_URL`. Tests never install or start
/// anything on the machine; `scripts/test.sh` runs `scripts/stack.sh up` and `tools` first.
pub fn stack() {
    static UP: Once = Once::new();
    UP.call_once(|| {
        for (what, url) in [
            (
                "Postgres (PIIVAULT_PG_ADMIN_URL)",
                env("PIIVAULT_PG_ADMIN_URL"),
            ),
            (
                "the SQS/KMS emulator (AWS_ENDPOINT_URL)",
                env("AWS_ENDPOINT_URL"),
            ),
        ] {
            let address = host_port(&url);
            let answers = std::net::ToSocketAddrs::to_socket_addrs(&address.as_str())
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
                });
            assert!(
                answers,
                "{what} does not answer at {address}: run `scripts/stack.sh up` (or the whole \
                 suite with `scripts/test.sh`, which does it)"
            );
        }
    });
}

/// `host:port` of a `scheme://[user[:pw]@]host:port[/...]` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Runs `work` to completion on a runtime of its own in a thread of its own: `Drop` cannot
/// await, and may run on (or, unwinding, outside) the test's runtime.
pub fn block_on_own_thread<F>(work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    })
    .join();
}

/// A local-stack setting: from the environment, else the default of scripts/env.sh.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            let (_, value) = DEFAULTS
                .iter()
                .find(|(n, _)| *n == name)
                .expect("a known setting");
            (*value).to_owned()
        })
}

/// The local-stack variables a child process needs (AWS endpoint, region, dummy credentials).
pub fn stack_env() -> Vec<(&'static str, String)> {
    DEFAULTS
        .iter()
        .map(|(name, _)| (*name, env(name)))
        .collect()
}

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh database in the shared cluster (or a test's own), dropped when the value is, also
/// when the test fails.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin_url: String,
}

impl TestDb {
    /// A fresh database in the shared cluster.
    pub async fn new() -> TestDb {
        stack();
        TestDb::in_cluster(&env("PIIVAULT_PG_ADMIN_URL")).await
    }

    /// A fresh database in the cluster `admin_url` (a superuser's URL) reaches.
    pub async fn in_cluster(admin_url: &str) -> TestDb {
        let admin = PgPool::connect(admin_url)
            .await
            .expect("cannot connect as the cluster's superuser");
        let name = unique("pv_test");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("the admin URL has no database part"),
        };
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&url)
            .await
            .unwrap();
        TestDb {
            name,
            url,
            pool,
            admin_url: admin_url.to_owned(),
        }
    }

    /// Takes an exclusive lock on `user_logins` in a transaction the caller ends: every batch
    /// write waits until then.
    pub async fn block_user_logins(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    }

    /// Holds an exclusive lock on the shared-token summary until the transaction is dropped.
    pub async fn block_shared_tokens(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query(
            "LOCK TABLE etl.shared_tokens, etl.shared_tokens_state IN ACCESS EXCLUSIVE MODE",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx
    }

    /// Waits until `count_sql` counts `want` or `timeout` passes; returns the last count.
    pub async fn wait_for(&self, count_sql: &str, want: i64, timeout: std::time::Duration) -> i64 {
        let until = std::time::Instant::now() + timeout;
        loop {
            let rows = self.count(count_sql).await;
            if rows >= want || std::time::Instant::now() > until {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits (10 s at most) until no `etl` session is left on this database. A killed `etl`
    /// may have sent a COMMIT its backend is still carrying out; counting before that backend is
    /// gone would miss the batch it commits.
    pub async fn wait_for_etl_sessions_to_end(&self) {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND application_name = 'piivault-etl'",
            self.name
        );
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while self.count(&sql).await > 0 {
            assert!(
                std::time::Instant::now() < until,
                "a killed etl's session outlived 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // FORCE ends the test's own pool's sessions too (the pool belongs to the test's runtime,
        // which is blocked here, so it is not closed from this thread).
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        block_on_own_thread(async move {
            // A cluster the test already stopped has nothing left to drop.
            if let Ok(Ok(admin)) =
                tokio::time::timeout(Duration::from_secs(5), PgPool::connect(&admin_url)).await
            {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
                admin.close().await;
            }
        });
    }
}

/// A fresh local KEK file (mode 0600) in its own temporary directory.
pub struct TestKek {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestKek {
    pub fn new() -> TestKek {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.bin");
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).unwrap();
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        TestKek { _dir: dir, path }
    }

    pub fn uri(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

/// SDK configuration for the test's own SQS/KMS clients, pointed at the emulator.
pub async fn aws_config() -> aws_config::SdkConfig {
    stack();
    aws_config_at(&env("AWS_ENDPOINT_URL")).await
}

/// SDK configuration pointed at the emulator serving `endpoint`.
pub async fn aws_config_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(env("AWS_REGION")))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "piivault-tests",
        ))
        .load()
        .await
}

pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_config().await)
}

/// A client for the emulator serving `queue_url` (the shared one, or a test's own).
async fn sqs_for(queue_url: &str) -> aws_sdk_sqs::Client {
    stack();
    let endpoint = queue_url
        .splitn(4, '/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    aws_sdk_sqs::Client::new(&aws_config_at(&endpoint).await)
}

/// A fresh queue; `visibility_secs` sets its default visibility timeout.
pub async fn queue(visibility_secs: u32) -> TestQueue {
    let name = unique("pv").replace('_', "-");
    TestQueue(create_queue(&sqs().await, &name, visibility_secs).await)
}

/// A queue of the test's own (its URL), deleted when the value is dropped, also when the test
/// fails.
pub struct TestQueue(pub String);

impl std::ops::Deref for TestQueue {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let url = self.0.clone();
        block_on_own_thread(async move {
            let delete = async {
                sqs_for(&url)
                    .await
                    .delete_queue()
                    .queue_url(&url)
                    .send()
                    .await
            };
            // An emulator the test already stopped has nothing left to delete.
            let _ = tokio::time::timeout(Duration::from_secs(5), delete).await;
        });
    }
}

/// Creates (or finds) the queue `name` through `client`; returns its URL.
pub async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: u32,
) -> String {
    client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// Sends bodies, ten per call.
pub async fn send(queue_url: &str, bodies: &[String]) {
    let client = sqs_for(queue_url).await;
    for chunk in bodies.chunks(10) {
        let entries = chunk.iter().enumerate().map(|(i, body)| {
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .build()
                .unwrap()
        });
        let out = client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries.collect()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.successful().len(), chunk.len());
    }
}

/// Sends `bodies` in the background, 500 at a time, keeping the queue at most about `max_depth`
/// deep: moto slows as a queue deepens (docs/ARCHITECTURE.md, "The SQS/KMS emulator"), and real producers send alongside consumers.
pub fn produce(
    queue_url: &str,
    bodies: Vec<String>,
    max_depth: i64,
) -> tokio::task::JoinHandle<()> {
    let queue_url = queue_url.to_owned();
    tokio::spawn(async move {
        for chunk in bodies.chunks(500) {
            while queue_depth(&queue_url).await > max_depth {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            send(&queue_url, chunk).await;
        }
    })
}

/// Visible + in-flight messages left on a queue.
pub async fn queue_depth(queue_url: &str) -> i64 {
    let attrs = sqs_for(queue_url)
        .await
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    attrs.values().map(|v| v.parse::<i64>().unwrap()).sum()
}

/// The canonical sample: 100 message bodies (99 logins, one malformed).
pub fn sample_bodies() -> Vec<String> {
    let text = std::fs::read_to_string(sample_path()).unwrap();
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    items.iter().map(|v| v.to_string()).collect()
}

/// Fails if `text` (served to `what`) contains any message's `user_id`, `ip` or `device_id`.
pub fn assert_no_input_values(text: &str, bodies: &[String], what: &str) {
    for body in bodies {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        for field in ["user_id", "ip", "device_id"] {
            if let Some(value) = v.get(field).and_then(|x| x.as_str()) {
                assert!(!text.contains(value), "{field} {value} in {what}");
            }
        }
    }
}

pub fn sample_path() -> PathBuf {
    Path::new(ROOT).join("tests/fixtures/sample_logins.json")
}

/// The outcome of one `etl` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts success and parses the last stdout line as JSON.
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.code, 0,
            "etl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        serde_json::from_str(self.stdout.lines().last().expect("no output")).unwrap()
    }

    /// Asserts success and parses every stdout line as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.assert_success()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Parses the last stdout line as JSON, whatever the exit code (a failing verify's summary).
    pub fn json_line(&self) -> serde_json::Value {
        let last = self.stdout.lines().last();
        serde_json::from_str(last.unwrap_or_else(|| panic!("no output: {}", self.stderr))).unwrap()
    }

    /// Asserts exit code 0 (printing stdout and stderr otherwise); returns the run.
    pub fn assert_success(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "etl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// An `etl` invocation environment: database, queue, KEK.
#[derive(Clone, Default)]
pub struct Etl {
    pub vars: Vec<(String, String)>,
    pub removed: Vec<String>,
}

impl Etl {
    pub fn new(db_url: &str, queue_url: &str, kek_uri: &str) -> Etl {
        Etl::default()
            .with("DATABASE_URL", db_url)
            .with("SQS_QUEUE_URL", queue_url)
            .with("PIIVAULT_KEK", kek_uri)
    }

    pub fn with(mut self, name: &str, value: &str) -> Etl {
        self.vars.push((name.into(), value.into()));
        self
    }

    pub fn without(mut self, name: &str) -> Etl {
        self.removed.push(name.into());
        self
    }

    /// The `etl` command with this environment (stdin closed), to run or to spawn.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        stack();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etl"));
        cmd.args(args).stdin(Stdio::null());
        for name in [
            "DATABASE_URL",
            "SQS_QUEUE_URL",
            "PIIVAULT_KEK",
            "PIIVAULT_DEPLOYMENT",
            "PIIVAULT_REVEAL_DATABASE_URL",
            "PIIVAULT_AUDIT_SIGNER",
            "RUST_LOG",
        ] {
            cmd.env_remove(name);
        }
        cmd.envs(stack_env());
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        for name in &self.removed {
            cmd.env_remove(name);
        }
        cmd
    }

    /// Starts `etl` in the background with stdout and stderr piped.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut cmd = self.command(args);
        // A test that fails before stopping it must not leave a consumer running.
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("cannot start etl")
    }

    /// Runs `etl` to the end; one that hangs is killed and fails the test after `RUN_LIMIT`.
    pub async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        cmd.kill_on_drop(true);
        tokio::time::timeout(RUN_LIMIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("etl {} still running after {RUN_LIMIT:?}", args[0]))
            .expect("cannot start etl")
            .into()
    }
}

/// Five users (`{user}1`..`{user}5`), two logins each, with IPs `10.{net}.u.i` and devices
/// `{device}-u-i`, as JSON lines.
pub fn two_logins_each(user: &str, net: u8, device: &str) -> String {
    (1..=5)
        .flat_map(|u| {
            (0..2).map(move |i| {
                format!(
                    r#"{{"user_id":"{user}{u}","ip":"10.{net}.{u}.{i}","device_id":"{device}-{u}-{i}"}}"#
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Longest any single `etl` run in a test may take: a hang fails its test instead of CI's clock.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(240);

/// Sends SIGTERM to a spawned `etl` and collects its output (at most 10 s).
pub async fn sigterm(child: tokio::process::Child) -> Run {
    let pid = child.id().expect("still running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("etl stops within 10 s of SIGTERM")
        .unwrap()
        .into()
}

/// A fresh KMS key on the emulator, as a `kms:` KEK URI.
pub async fn kms_kek() -> String {
    let kms = aws_sdk_kms::Client::new(&aws_config().await);
    let key = kms
        .create_key()
        .description("piivault test KEK")
        .send()
        .await
        .unwrap();
    format!("kms:{}", key.key_metadata.unwrap().key_id)
}

/// A migrated database with keys, a queue and a KEK: the usual starting point. Everything it
/// made (database, queue, logins, KEK file) goes when it is dropped, also when the test fails.
pub struct Setup {
    pub db: TestDb,
    pub queue: TestQueue,
    pub kek: TestKek,
    pub etl: Etl,
    logins: std::sync::Mutex<Vec<String>>,
}

/// Options of a [`Setup`]: `Setup::builder().visibility(5).cluster(&cluster).build().await`.
#[derive(Default)]
pub struct SetupBuilder {
    visibility_secs: Option<u32>,
    admin_url: Option<String>,
    kek_uri: Option<String>,
    emulator: Option<String>,
    keys: Option<bool>,
}

impl SetupBuilder {
    /// The queue's default visibility timeout (30 s unless set).
    pub fn visibility(mut self, secs: u32) -> SetupBuilder {
        self.visibility_secs = Some(secs);
        self
    }

    /// The database in a cluster of the test's own rather than the shared one.
    pub fn cluster(mut self, cluster: &TempCluster) -> SetupBuilder {
        self.admin_url = Some(cluster.url());
        self
    }

    /// The queue on an emulator of the test's own, which `etl` then talks to.
    pub fn emulator(mut self, emulator: &TempEmulator) -> SetupBuilder {
        self.emulator = Some(emulator.endpoint());
        self
    }

    /// This KEK (e.g. a `kms:` URI) rather than the test's key file.
    pub fn kek(mut self, uri: &str) -> SetupBuilder {
        self.kek_uri = Some(uri.to_owned());
        self
    }

    /// Migrate only: the test runs `etl keys init` itself.
    pub fn without_keys(mut self) -> SetupBuilder {
        self.keys = Some(false);
        self
    }

    pub async fn build(self) -> Setup {
        let db = match &self.admin_url {
            Some(url) => TestDb::in_cluster(url).await,
            None => TestDb::new().await,
        };
        let visibility = self.visibility_secs.unwrap_or(30);
        let queue = match &self.emulator {
            Some(endpoint) => {
                let client = aws_sdk_sqs::Client::new(&aws_config_at(endpoint).await);
                let name = unique("pv").replace('_', "-");
                TestQueue(create_queue(&client, &name, visibility).await)
            }
            None => queue(visibility).await,
        };
        let kek = TestKek::new();
        let kek_uri = self.kek_uri.unwrap_or_else(|| kek.uri());
        let mut etl = Etl::new(&db.url, &queue, &kek_uri);
        if let Some(endpoint) = &self.emulator {
            etl = etl.with("AWS_ENDPOINT_URL", endpoint);
        }
        etl.run(&["migrate"]).await.assert_success();
        if self.keys.unwrap_or(true) {
            etl.run(&["keys", "init"]).await.assert_success();
        }
        Setup {
            db,
            queue,
            kek,
            etl,
            logins: Default::default(),
        }
    }
}

impl Setup {
    pub fn builder() -> SetupBuilder {
        SetupBuilder::default()
    }

    pub async fn new() -> Setup {
        Setup::builder().build().await
    }

    pub async fn with_visibility(visibility_secs: u32) -> Setup {
        Setup::builder().visibility(visibility_secs).build().await
    }

    /// [`Setup::new`] with the canonical sample loaded through `--input`.
    pub async fn with_sample() -> Setup {
        let s = Setup::new().await;
        s.etl
            .run(&["run", "--input", sample_path().to_str().unwrap()])
            .await
            .json();
        s
    }

    /// Loads `lines` (JSON lines, one message each) with `etl run --input`; returns the summary.
    pub async fn load_lines(&self, lines: &str) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("input.jsonl");
        std::fs::write(&file, lines).unwrap();
        self.etl
            .run(&["run", "--input", file.to_str().unwrap()])
            .await
            .json()
    }

    /// `etl run --drain` with a short long poll, so the test ends soon after the queue empties.
    /// Waits until `count_sql` counts `want` or `timeout` passes; returns the last count.
    pub async fn wait_for(&self, count_sql: &str, want: i64, timeout: std::time::Duration) -> i64 {
        self.db.wait_for(count_sql, want, timeout).await
    }

    /// A login user holding only `group`, dropped with the setup; returns its name and its URL
    /// for the test database.
    pub async fn login(&self, group: &str) -> (String, String) {
        let name = unique("pv_login");
        self.logins.lock().unwrap().push(name.clone());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {group}"
        )))
        .execute(&self.db.pool)
        .await
        .unwrap();
        let (_, rest) = self.db.url.split_once('@').unwrap();
        (name.clone(), format!("postgres://{name}:pw@{rest}"))
    }

    /// A login holding only `group`, and `etl` using it for the auditor's commands (reveal,
    /// audit): (name, URL, etl).
    pub async fn login_etl(&self, group: &str) -> (String, String, Etl) {
        let (name, url) = self.login(group).await;
        let etl = self.etl.clone().with("PIIVAULT_REVEAL_DATABASE_URL", &url);
        (name, url, etl)
    }

    pub async fn drain(&self) -> serde_json::Value {
        self.etl
            .run(&["run", "--drain", "--wait-time-secs", "2"])
            .await
            .json()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Logins are the cluster's, not the database's: dropped here, before the database, with
        // whatever they own or were granted in it.
        let logins = std::mem::take(&mut *self.logins.lock().unwrap_or_else(|e| e.into_inner()));
        if logins.is_empty() {
            return;
        }
        let url = self.db.url.clone();
        block_on_own_thread(async move {
            let Ok(Ok(pool)) =
                tokio::time::timeout(Duration::from_secs(5), PgPool::connect(&url)).await
            else {
                return;
            };
            for name in logins {
                for sql in [
                    format!("DROP OWNED BY {name}"),
                    format!("DROP ROLE IF EXISTS {name}"),
                ] {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                }
            }
            pool.close().await;
        });
    }
}

/// A throwaway Postgres cluster of the test's own, on a free port: tests that need an outage
/// stop and start this one, never the machine's shared server.
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl TempCluster {
    /// initdb + start (trust auth, superuser `postgres`, fsync off).
    pub fn start() -> TempCluster {
        use std::os::unix::fs::MetadataExt;
        let versions = std::fs::read_dir("/usr/lib/postgresql").expect(
            "no Postgres server binaries in /usr/lib/postgresql: run `scripts/stack.sh up`",
        );
        let bin = versions
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("pv-cluster")
            .tempdir()
            .unwrap();
        let as_postgres = std::fs::metadata("/proc/self").unwrap().uid() == 0; // root may not run postgres
        if as_postgres {
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
            assert!(chown.unwrap().success());
        }
        let port = free_port();
        let cluster = TempCluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = cluster.dir.path().join("data");
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster
    }

    /// A Postgres tool, run as `postgres` when the tests run as root (which Postgres refuses).
    fn tool(&self, tool: &str) -> std::process::Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .tool(tool)
            .args(args)
            .output()
            .expect("cannot run a Postgres tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: open connections are cut, as in a real outage).
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .tool("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_accepting(port, path, None);
    (status, body)
}

/// A GET with an optional `Accept` header: status, `Content-Type` and body.
pub fn http_get_accepting(port: u16, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix(name).map(str::to_owned))
    };
    let content_type = header("content-type: ").unwrap_or_default();
    let body = match header("transfer-encoding: ").as_deref() {
        Some("chunked") => dechunk(body),
        _ => body.to_owned(),
    };
    (status, content_type, body)
}

/// The body of a `Transfer-Encoding: chunked` response (Prometheus's larger answers).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An emulator process of the test's own on a free port: a test that restarts it never touches
/// the shared one (moto keeps every queue in memory, so a restart empties it).
pub struct TempEmulator {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl TempEmulator {
    /// Starts the patched moto launcher of scripts/stack.sh and waits until it answers.
    pub fn start() -> TempEmulator {
        let python = Path::new(ROOT).join(".venv-aws/bin/python");
        assert!(
            python.exists(),
            "the emulator's virtualenv is missing ({}): run `scripts/stack.sh up`",
            python.display()
        );
        let mut emulator = TempEmulator {
            child: None,
            port: free_port(),
        };
        emulator.start_again();
        emulator
    }

    /// Starts (or restarts) the server, empty, and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let child = std::process::Command::new(Path::new(ROOT).join(".venv-aws/bin/python"))
            .arg(Path::new(ROOT).join("scripts/moto_server.py"))
            .args(["--port", &self.port.to_string(), "--threads", "16"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the emulator");
        self.child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "the test's emulator did not listen on port {} within 30 s",
            self.port
        );
    }

    /// Kills the server: every queue and message it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The endpoint URL (`AWS_ENDPOINT_URL`) of this emulator.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SQS client for this emulator.
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&aws_config_at(&self.endpoint()).await)
    }
}

impl Drop for TempEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SQLSTATE of "insufficient privilege".
pub const DENIED: &str = "42501";

/// SQLSTATE of writing through `user_logins`, a view of two branches nobody can write through.
pub const VIEW_NOT_WRITABLE: &str = "55000";

/// The SQLSTATE of a statement run as `url` (a login, as with psql), or "ok".
pub async fn attempt(url: &str, sql: &str) -> String {
    let pool = PgPool::connect(url).await.unwrap();
    // Simple protocol, like `psql -c`: several statements run in one implicit transaction.
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await;
    pool.close().await;
    match result {
        Ok(_) => "ok".into(),
        Err(sqlx::Error::Database(e)) => e.code().unwrap_or_default().into_owned(),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// A spawned `etl`'s stderr, collected line by line as it is written, so a test can wait for a
/// line while the process runs.
pub struct StderrLog {
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl StderrLog {
    /// Takes the child's piped stderr; the child's own output then has none.
    pub fn take(child: &mut tokio::process::Child) -> StderrLog {
        use tokio::io::AsyncBufReadExt;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let collected = text.clone();
        let mut lines =
            tokio::io::BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        StderrLog { text }
    }

    /// Waits until stderr contains `needle`; false after `timeout`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if self.text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.text().contains(needle)
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

/// `etl reveal` of one user's records with the common purpose: the arguments of most reveals.
pub fn reveal_user<'a>(user: &'a str, reason: &'a str) -> [&'a str; 7] {
    [
        "reveal",
        "--purpose",
        "fraud-investigation",
        "--user-id",
        user,
        "--reason",
        reason,
    ]
}
