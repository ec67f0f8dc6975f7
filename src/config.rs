//! Settings from the environment (and flags, where clap reads the same variables). Secrets —
//! database URLs with passwords — come from the environment only, never from the command line.

use std::fmt;

use crate::kek::signer::SignerUri;
use crate::kek::{KekError, KekUri};

/// A missing or unusable setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("{var} is not set.\n{hint}")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    /// A variable is set to a value it cannot take.
    #[error("{var} {problem}.\n{hint}")]
    Invalid {
        var: &'static str,
        problem: String,
        hint: &'static str,
    },
}

/// A database URL; its `Debug` hides the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: String) -> DatabaseUrl {
        DatabaseUrl(url)
    }

    /// The URL to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    /// Only the parts that are never secret, as Postgres's own parser reads the URL: a password
    /// may also sit in the query string (`?password=`), so no text of the URL is echoed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.parse::<sqlx::postgres::PgConnectOptions>() {
            Ok(o) => write!(
                f,
                "postgres://{}:***@{}:{}/{}",
                o.get_username(),
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            Err(_) => f.write_str("<a database URL that does not parse; not shown>"),
        }
    }
}

/// Everything the commands read from the environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `DATABASE_URL`: the ETL's (and admin's) connection.
    pub database_url: Option<DatabaseUrl>,
    /// `PIIVAULT_REVEAL_DATABASE_URL`: the auditor's connection for `reveal`.
    pub reveal_database_url: Option<DatabaseUrl>,
    /// `SQS_QUEUE_URL` (or `--queue-url`).
    pub queue_url: Option<String>,
    /// `PIIVAULT_KEK` (or `--kek`): `file:<path>` or `kms:<key>`.
    pub kek: Option<String>,
    /// `PIIVAULT_DEPLOYMENT` (or `--deployment`): the deployment data keys are wrapped for
    /// (`prod-eu1`); unset, the database's name stands in.
    pub deployment: Option<String>,
    /// `PIIVAULT_AUDIT_SIGNER`: `kms:<key>` or `file:<path>`, the key audit checkpoints are
    /// signed with.
    pub audit_signer: Option<String>,
}

/// Longest deployment name accepted (a KMS encryption-context value, and an IAM condition).
pub const DEPLOYMENT_MAX_LEN: usize = 64;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// Reads `DATABASE_URL`, `PIIVAULT_REVEAL_DATABASE_URL`, `SQS_QUEUE_URL`, `PIIVAULT_KEK`,
    /// `PIIVAULT_DEPLOYMENT`, `PIIVAULT_AUDIT_SIGNER`.
    pub fn from_env() -> Settings {
        Settings {
            database_url: var("DATABASE_URL").map(DatabaseUrl),
            reveal_database_url: var("PIIVAULT_REVEAL_DATABASE_URL").map(DatabaseUrl),
            queue_url: var("SQS_QUEUE_URL"),
            kek: var("PIIVAULT_KEK"),
            deployment: var("PIIVAULT_DEPLOYMENT"),
            audit_signer: var("PIIVAULT_AUDIT_SIGNER"),
        }
    }

    /// The ETL connection URL.
    pub fn database_url(&self) -> Result<&DatabaseUrl, ConfigError> {
        self.database_url.as_ref().ok_or(ConfigError::Missing {
            var: "DATABASE_URL",
            hint: "Set it to postgres://user:password@host:5432/database.",
        })
    }

    /// The queue URL.
    pub fn queue_url(&self) -> Result<&str, ConfigError> {
        self.queue_url.as_deref().ok_or(ConfigError::Missing {
            var: "SQS_QUEUE_URL",
            hint: "Set it (or --queue-url) to the queue's URL, e.g. https://sqs.us-east-1.amazonaws.com/123456789012/logins.",
        })
    }

    /// The key-encryption key URI.
    pub fn kek_uri(&self) -> Result<KekUri, KekError> {
        self.kek.as_deref().ok_or(KekError::Missing)?.parse()
    }

    /// The audit checkpoint signer, if configured.
    pub fn audit_signer(&self) -> Result<Option<SignerUri>, ConfigError> {
        let Some(text) = self.audit_signer.as_deref() else {
            return Ok(None);
        };
        text.parse().map(Some).map_err(|()| ConfigError::Invalid {
            var: "PIIVAULT_AUDIT_SIGNER",
            problem: "is neither kms:<key> nor file:<path>".to_owned(),
            hint: "Use kms:<key-id|alias|arn> (an ECC_NIST_P256 SIGN_VERIFY key) or file:<path> (made by `etl audit signer-init`).",
        })
    }

    /// The configured deployment name, checked; `None` when unset (the database's name applies).
    /// 1 to 64 of `A-Z a-z 0-9 . _ - : /`: no spaces or quotes to get wrong in an IAM condition.
    pub fn deployment(&self) -> Result<Option<String>, ConfigError> {
        let Some(name) = self.deployment.as_deref() else {
            return Ok(None);
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:/".contains(c);
        let problem = if name.len() > DEPLOYMENT_MAX_LEN {
            format!(
                "is {} characters long (at most {DEPLOYMENT_MAX_LEN})",
                name.len()
            )
        } else if let Some(c) = name.chars().find(|&c| !allowed(c)) {
            format!("contains {c:?}")
        } else {
            return Ok(Some(name.to_owned()));
        };
        Err(ConfigError::Invalid {
            var: "PIIVAULT_DEPLOYMENT",
            problem,
            hint: "Name the deployment with letters, digits and . _ - : / only, e.g. prod-eu1.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names_are_checked() {
        let with = |d: Option<&str>| Settings {
            deployment: d.map(str::to_owned),
            ..Settings::default()
        };
        assert_eq!(with(None).deployment().unwrap(), None);
        assert_eq!(
            with(Some("prod-eu1")).deployment().unwrap().as_deref(),
            Some("prod-eu1")
        );
        assert_eq!(
            with(Some("acme/prod:eu_1.a"))
                .deployment()
                .unwrap()
                .as_deref(),
            Some("acme/prod:eu_1.a")
        );
        for bad in ["prod eu1", "prod\"", "prød", &"x".repeat(65)] {
            let err = with(Some(bad)).deployment().unwrap_err().to_string();
            assert!(err.starts_with("PIIVAULT_DEPLOYMENT "), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_database_password() {
        let url = DatabaseUrl("postgres://etl:s3cret@db:5432/x".into());
        assert_eq!(format!("{url:?}"), "postgres://etl:***@db:5432/x");
        for url in [
            "postgres:///x?password=s3cret&user=etl",
            "postgres://db/x?password=s3cret",
            "postgresql://etl@db/x?sslmode=disable&password=s3cret",
            "postgres://etl:s3cret@db@evil/x",
            "not a url s3cret",
        ] {
            let shown = format!("{:?}", DatabaseUrl(url.into()));
            assert!(!shown.contains("s3cret"), "{url} -> {shown}");
        }
    }
}
