//! The protect stage: a received message and its decoding become the rows to store — tokens and
//! sealed originals for a login, a sealed body and a PII-free reason for a rejection.
//!
//! Plaintext PII stops here: what leaves is [`Token`]s, [`Sealed`] values and plain fields.

use chrono::{DateTime, NaiveDate, Utc};

use crate::crypto::{Field, KeyVersion, SealKey, Sealed, Token, TokenKey};
use crate::event::{self, LoginEvent, Pii, Rejection};
use crate::source::Received;

/// The active keys new rows are written with.
#[derive(Clone, Copy)]
pub struct WriteKeys<'a> {
    /// Seals originals and quarantined bodies.
    pub seal: &'a SealKey,
    /// Computes `masked_*` tokens.
    pub token: &'a TokenKey,
}

/// What one message becomes.
pub enum Record {
    /// A valid login: analysts' row + vault row.
    Login(ProtectedLogin),
    /// A rejected message: quarantine row.
    Quarantine(QuarantineEntry),
}

impl Record {
    /// The idempotency key.
    pub fn message_id(&self) -> &str {
        match self {
            Record::Login(l) => &l.message_id,
            Record::Quarantine(q) => &q.message_id,
        }
    }
}

/// A login ready for `user_logins` and `vault.login_pii`. Holds no plaintext PII.
pub struct ProtectedLogin {
    pub message_id: String,
    pub user_id: String,
    pub device_type: Option<String>,
    pub locale: Option<String>,
    pub app_version_text: Option<String>,
    pub app_version: Option<i32>,
    pub masked_ip: Option<Token>,
    pub masked_device_id: Option<Token>,
    pub token_version: KeyVersion,
    pub seal_version: KeyVersion,
    pub ip_sealed: Option<Sealed>,
    pub device_id_sealed: Option<Sealed>,
    pub create_date: NaiveDate,
    pub received_at: DateTime<Utc>,
}

/// A rejected message ready for `etl.quarantine`: the raw body sealed, the reason in clear.
pub struct QuarantineEntry {
    pub message_id: String,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    pub key_version: KeyVersion,
    pub body_sealed: Sealed,
}

/// Decodes and protects one message.
pub fn protect(keys: WriteKeys<'_>, message: &Received, received_at: DateTime<Utc>) -> Record {
    match event::decode(&message.body) {
        Ok(login) => Record::Login(protect_login(keys, message, login, received_at)),
        Err(rejection) => Record::Quarantine(quarantine(keys, message, &rejection, received_at)),
    }
}

fn protect_login(
    keys: WriteKeys<'_>,
    message: &Received,
    login: LoginEvent,
    received_at: DateTime<Utc>,
) -> ProtectedLogin {
    let id = message.message_id.as_str();
    let (masked_ip, ip_sealed) = login
        .ip
        .as_ref()
        .map(|ip| protect_pii(keys, id, Field::Ip, ip))
        .unzip();
    let (masked_device_id, device_id_sealed) = login
        .device_id
        .as_ref()
        .map(|device| protect_pii(keys, id, Field::DeviceId, device))
        .unzip();
    ProtectedLogin {
        message_id: message.message_id.clone(),
        app_version: login
            .app_version
            .as_deref()
            .and_then(event::app_version_number),
        user_id: login.user_id.clone(),
        device_type: login.device_type.clone(),
        locale: login.locale.clone(),
        app_version_text: login.app_version.clone(),
        masked_ip,
        masked_device_id,
        token_version: keys.token.version(),
        seal_version: keys.seal.version(),
        ip_sealed,
        device_id_sealed,
        create_date: message.sent_at.date_naive(),
        received_at,
    }
}

/// The token of the canonical form and the sealed original.
fn protect_pii(
    keys: WriteKeys<'_>,
    message_id: &str,
    field: Field,
    value: &Pii,
) -> (Token, Sealed) {
    let token = keys.token.token(field, value.canonical());
    (
        token,
        keys.seal
            .seal(message_id, field, value.original().as_bytes()),
    )
}

fn quarantine(
    keys: WriteKeys<'_>,
    message: &Received,
    rejection: &Rejection,
    received_at: DateTime<Utc>,
) -> QuarantineEntry {
    QuarantineEntry {
        message_id: message.message_id.clone(),
        received_at,
        reason: rejection.to_string(),
        key_version: keys.seal.version(),
        body_sealed: keys
            .seal
            .seal(&message.message_id, Field::Body, message.body.as_bytes()),
    }
}
