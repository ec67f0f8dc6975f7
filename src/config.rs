//! Settings from the environment (and flags, where clap reads the same variables). Secrets —
//! database URLs with passwords — come from the environment only, never from the command line.

use std::fmt;

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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once('@') {
            Some((_, host)) => write!(f, "postgres://***@{host}"),
            None => f.write_str(&self.0),
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
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// Reads `DATABASE_URL`, `PIIVAULT_REVEAL_DATABASE_URL`, `SQS_QUEUE_URL`, `PIIVAULT_KEK`.
    pub fn from_env() -> Settings {
        Settings {
            database_url: var("DATABASE_URL").map(DatabaseUrl),
            reveal_database_url: var("PIIVAULT_REVEAL_DATABASE_URL").map(DatabaseUrl),
            queue_url: var("SQS_QUEUE_URL"),
            kek: var("PIIVAULT_KEK"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_database_password() {
        let url = DatabaseUrl("postgres://etl:s3cret@db:5432/x".into());
        assert_eq!(format!("{url:?}"), "postgres://***@db:5432/x");
    }
}
