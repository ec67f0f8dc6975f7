//! The deployment files: Kubernetes manifests validated offline against the API schemas (and
//! KEDA's documented fields), their rules checked against each other and the Dockerfile, and the
//! pod's own commands run for real — as the image's non-root user, probed the way the kubelet
//! probes, stopped the way Kubernetes stops it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    Etl, TestDb, free_port, http_get, kms_kek, queue, queue_depth, sample_bodies, send,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs scripts/check_deploy.py on `root`: Ok(facts) or Err(stderr).
fn check_deploy(root: &Path) -> Result<serde_json::Value, String> {
    let python = Path::new(ROOT).join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/stack.sh tools (installs the manifest validator)",
        python.display()
    );
    let out = std::process::Command::new(python)
        .arg(Path::new(ROOT).join("scripts/check_deploy.py"))
        .arg(root)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A copy of the deployment files with `file`'s first `from` replaced by `to`.
fn mutated(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let kube = dir.path().join("deploy/kubernetes");
    std::fs::create_dir_all(&kube).unwrap();
    for entry in std::fs::read_dir(Path::new(ROOT).join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, kube.join(path.file_name().unwrap())).unwrap();
    }
    for name in ["Dockerfile", "docker-compose.yml"] {
        std::fs::copy(Path::new(ROOT).join(name), dir.path().join(name)).unwrap();
    }
    let target: PathBuf = dir.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(text.contains(from), "{from:?} not in {file}");
    std::fs::write(&target, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn the_manifests_validate_and_the_checker_catches_each_kind_of_mistake() {
    let facts = check_deploy(Path::new(ROOT)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(facts["deployment_args"][0], "run");

    for (file, from, to, expected) in [
        (
            "deploy/kubernetes/deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 25",
            "must exceed --shutdown-timeout-secs",
        ),
        (
            "deploy/kubernetes/deployment.yaml",
            "livenessProbe:",
            "livenesProbe:",
            "'livenesProbe' was unexpected",
        ),
        (
            "deploy/kubernetes/deployment.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "needs a read-only root",
        ),
        (
            "deploy/kubernetes/deployment.yaml",
            "path: /readyz",
            "path: /healthz",
            "readinessProbe must GET /readyz",
        ),
        (
            "deploy/kubernetes/keda.yaml",
            "queueLength:",
            "queueLenght:",
            "'queueLenght' was unexpected",
        ),
        (
            "deploy/kubernetes/keda.yaml",
            "    name: piivault-etl\n  # One pod",
            "    name: piivault-other\n  # One pod",
            "scaleTargetRef piivault-other is not the Deployment",
        ),
        (
            "deploy/kubernetes/keda.yaml",
            "    identityOwner: workload\n",
            "",
            "identityOwner: workload",
        ),
        (
            "deploy/kubernetes/setup-job.yaml",
            "serviceAccountName: piivault-setup",
            "serviceAccountName: piivault-etl",
            "needs its own service account",
        ),
        (
            "docker-compose.yml",
            "    pull_policy: never # built by the etl service below\n",
            "    build: .\n",
            "exactly one service should build",
        ),
        (
            "Dockerfile",
            "USER 65532:65532",
            "USER 0",
            "numeric non-root USER",
        ),
        (
            "deploy/kubernetes/kustomization.yaml",
            "  - keda.yaml\n",
            "",
            "resources",
        ),
        (
            "deploy/kubernetes/summary-cronjob.yaml",
            "concurrencyPolicy: Forbid",
            "concurrencyPolicy: Allow",
            "concurrencyPolicy Forbid",
        ),
    ] {
        let dir = mutated(file, from, to);
        match check_deploy(dir.path()) {
            Ok(_) => panic!("{file}: {from:?} → {to:?} passed the check"),
            Err(e) => assert!(e.contains(expected), "{file}: expected {expected:?} in {e}"),
        }
    }

    // Every variable the files set is one etl reads (or the AWS SDK's, or the log filter).
    let sources: String = ["src/main.rs", "src/config.rs", "src/commands/run.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(Path::new(ROOT).join(f)).unwrap())
        .collect();
    for name in facts["env_names"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            name.starts_with("AWS_")
                || name == "RUST_LOG"
                || sources.contains(&format!("\"{name}\"")),
            "{name} is set by the deployment files but etl does not read it"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pods_commands_work_as_the_images_user_probed_and_stopped_like_kubernetes() {
    let facts = check_deploy(Path::new(ROOT)).unwrap_or_else(|e| panic!("{e}"));
    let db = TestDb::new().await;
    let queue_url = queue(30).await;
    let config = &facts["config"];
    // The pod's settings, with the cloud endpoints swapped for the local stack's.
    let etl = Etl::new(&db.url, &queue_url, &kms_kek().await)
        .with(
            "PIIVAULT_LOG_FORMAT",
            config["PIIVAULT_LOG_FORMAT"].as_str().unwrap(),
        )
        .with("RUST_LOG", config["RUST_LOG"].as_str().unwrap())
        .with("HOME", "/nonexistent");
    let as_image_user = |args: &[&str]| {
        let mut cmd = etl.command(args);
        cmd.current_dir("/");
        // The image's USER; only root may switch (elsewhere the test already runs as non-root).
        if running_as_root() {
            cmd.uid(65532).gid(65532);
        }
        cmd
    };

    // The set-up job's containers, twice: a re-run on the next deploy must succeed too.
    for _ in 0..2 {
        for args in containers_args(&facts["setup_args"]) {
            let out = as_image_user(&args).output().await.unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(db.count("SELECT count(*) FROM vault.data_keys").await, 2);

    // The Deployment's container, exactly its args but for the port (9090 may be taken here).
    let port = free_port();
    let args: Vec<String> = facts["deployment_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace(":9090", &format!(":{port}")))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bodies: Vec<String> = sample_bodies().into_iter().take(40).collect();
    send(&queue_url, &bodies).await;
    let pod = as_image_user(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // What the kubelet does: liveness and readiness probes until ready.
    let mut ready = (0, String::new());
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = http_get(port, "/readyz");
            if ready.0 == 200 {
                break;
            }
        }
    }
    assert_eq!(ready.0, 200, "never ready: {}", ready.1);
    assert_eq!(http_get(port, "/healthz").0, 200);
    if running_as_root() {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pod.id().unwrap())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().skip(1).all(|u| u == "65532"),
            "{uid}"
        );
    }
    let loaded = db
        .wait_for(
            "SELECT count(*) FROM user_logins",
            39,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(loaded, 39);

    // The summary CronJob's container, as the image's user on the ETL login's settings.
    for args in containers_args(&facts["cron_args"]) {
        let out = as_image_user(&args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(built["token_version"], 1, "{built}");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM etl.shared_tokens_state")
            .await,
        1
    );

    // What Kubernetes does on scale-in: SIGTERM, then SIGKILL after the grace period.
    let grace = facts["grace_seconds"].as_u64().unwrap();
    let pid = pod.id().unwrap().to_string();
    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(grace), pod.wait_with_output())
        .await
        .expect("the pod outlived its grace period")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(grace));
    // JSON logs as configured: every stderr line parses.
    assert!(stderr.contains("\"consuming\""), "{stderr}");
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert_eq!(queue_depth(&queue_url).await, 0, "every message deleted");
}

/// Each container's args, from the checker's JSON list of lists.
fn containers_args(lists: &serde_json::Value) -> Vec<Vec<&str>> {
    lists
        .as_array()
        .unwrap()
        .iter()
        .map(|args| {
            args.as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect()
        })
        .collect()
}

/// True when the test process runs as root (and may start etl as another user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
