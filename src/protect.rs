//! The protect stage: a received message and its decoding become the rows to store — tokens and
//! sealed originals for a login, a sealed body and a PII-free reason for a rejection.
//!
//! Plaintext PII stops here: what leaves is [`Token`]s, [`Sealed`] values and plain fields.

use chrono::{DateTime, NaiveDate, Utc};

use crate::crypto::{
    BodyTag, Field, KeyVersion, Keyring, OpenFailed, Place, SealKey, Sealed, Token, TokenKey,
};
use crate::event::{self, LoginEvent, Pii, Rejection};
use crate::source::{Body, Received};
use crate::user_ids;

/// The active keys new rows are written with.
#[derive(Clone, Copy)]
pub struct WriteKeys<'a> {
    /// Seals originals and quarantined bodies.
    pub seal: &'a SealKey,
    /// Computes `masked_*` tokens.
    pub token: &'a TokenKey,
    /// The pending token key while a token rotation is under way: new rows carry its tokens
    /// too, so the switch never has to wait for them.
    pub pending_token: Option<&'a TokenKey>,
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
    /// Tokens under the pending token key, if one is pending.
    pub pending: Option<PendingTokens>,
    pub seal_version: KeyVersion,
    pub ip_sealed: Option<Sealed>,
    pub device_id_sealed: Option<Sealed>,
    pub create_date: NaiveDate,
    pub received_at: DateTime<Utc>,
}

/// A login's tokens under the pending token key.
pub struct PendingTokens {
    pub version: KeyVersion,
    pub ip: Option<Token>,
    pub device_id: Option<Token>,
}

/// A rejected message ready for `etl.quarantine`: the raw body sealed, the reason in clear.
pub struct QuarantineEntry {
    pub message_id: String,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    pub key_version: KeyVersion,
    pub body_sealed: Sealed,
    /// Tags of every user id the body names (found leniently), for erasure.
    pub user_tags: Vec<BodyTag>,
}

/// Decodes and protects one message.
pub fn protect(keys: WriteKeys<'_>, message: &Received, received_at: DateTime<Utc>) -> Record {
    let decoded = match &message.body {
        Body::Text(text) => event::decode(text),
        Body::Unreadable { rejection, .. } => Err(rejection.clone()),
    };
    match decoded {
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
        .map(|ip| protect_pii(keys, &Place::login(id, &login.user_id, Field::Ip), ip))
        .unzip();
    let (masked_device_id, device_id_sealed) = login
        .device_id
        .as_ref()
        .map(|device| {
            protect_pii(
                keys,
                &Place::login(id, &login.user_id, Field::DeviceId),
                device,
            )
        })
        .unzip();
    let pending = keys.pending_token.map(|key| PendingTokens {
        version: key.version(),
        ip: login
            .ip
            .as_ref()
            .map(|ip| key.token(Field::Ip, ip.canonical())),
        device_id: login
            .device_id
            .as_ref()
            .map(|device| key.token(Field::DeviceId, device.canonical())),
    });
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
        pending,
        seal_version: keys.seal.version(),
        ip_sealed,
        device_id_sealed,
        create_date: message.sent_at.date_naive(),
        received_at,
    }
}

/// The token of the canonical form and the sealed original.
fn protect_pii(keys: WriteKeys<'_>, place: &Place<'_>, value: &Pii) -> (Token, Sealed) {
    let token = keys.token.token(place.field, value.canonical());
    (token, keys.seal.seal(place, value.original().as_bytes()))
}

fn quarantine(
    keys: WriteKeys<'_>,
    message: &Received,
    rejection: &Rejection,
    received_at: DateTime<Utc>,
) -> QuarantineEntry {
    quarantine_with_reason(keys, message, rejection.to_string(), received_at)
}

/// A quarantine entry for a message with a given PII-free reason (also used when the database
/// refuses a decoded row).
pub fn quarantine_with_reason(
    keys: WriteKeys<'_>,
    message: &Received,
    reason: String,
    received_at: DateTime<Utc>,
) -> QuarantineEntry {
    QuarantineEntry {
        message_id: message.message_id.clone(),
        received_at,
        reason,
        key_version: keys.seal.version(),
        body_sealed: keys
            .seal
            .seal(&Place::body(&message.message_id), message.body.as_bytes()),
        user_tags: body_tags(keys.seal, &message.body.text_lossy()),
    }
}

/// The tags of every user id `body` names, under `key`.
pub fn body_tags(key: &SealKey, body: &str) -> Vec<BodyTag> {
    user_ids::user_ids_in(body)
        .iter()
        .map(|id| key.body_tag(id))
        .collect()
}

/// Re-seals a quarantined body under `to` in the current format and tags it again under `to`
/// (`keys reencrypt`).
pub fn reseal_body(
    keys: &Keyring,
    to: &SealKey,
    message_id: &str,
    sealed: &Sealed,
) -> Result<(Sealed, Vec<BodyTag>), OpenFailed> {
    let place = Place::body(message_id);
    let plain = keys.open(&place, sealed)?;
    let tags = body_tags(to, &String::from_utf8_lossy(&plain));
    Ok((to.seal(&place, &plain), tags))
}

/// Re-seals one value under `to` in the current format (`keys reencrypt`): opened with
/// whatever version and format sealed it.
pub fn reseal(
    keys: &Keyring,
    to: &SealKey,
    place: &Place<'_>,
    sealed: &Sealed,
) -> Result<Sealed, OpenFailed> {
    let plain = keys.open(place, sealed)?;
    Ok(to.seal(place, &plain))
}

/// A vault row's sealed values and where they belong.
#[derive(Clone, Copy)]
pub struct SealedLogin<'a> {
    /// The row's message.
    pub message_id: &'a str,
    /// The row's user.
    pub user_id: &'a str,
    /// The sealed ip, if any.
    pub ip: Option<&'a Sealed>,
    /// The sealed device id, if any.
    pub device_id: Option<&'a Sealed>,
}

/// The tokens `token` gives a vault row's originals (`keys retokenize`, `keys verify`): the
/// originals are opened and canonicalised exactly as when they were first loaded.
pub fn tokens_of(
    keys: &Keyring,
    token: &TokenKey,
    row: SealedLogin<'_>,
) -> Result<(Option<Token>, Option<Token>), OpenFailed> {
    let SealedLogin {
        message_id,
        user_id,
        ip,
        device_id,
    } = row;
    let canonical = |field: Field, sealed: &Sealed| -> Result<Pii, OpenFailed> {
        let plain = keys.open(&Place::login(message_id, user_id, field), sealed)?;
        let unreadable = || OpenFailed {
            message_id: message_id.to_owned(),
            field: field.as_str(),
            key_version: sealed.version().map_or(0, |v| v.0),
        };
        let text = std::str::from_utf8(&plain).map_err(|_| unreadable())?;
        match field {
            Field::Ip => Pii::ip(text).ok_or_else(unreadable),
            _ => Ok(Pii::text(text)),
        }
    };
    let ip = ip
        .map(|s| canonical(Field::Ip, s).map(|v| token.token(Field::Ip, v.canonical())))
        .transpose()?;
    let device = device_id
        .map(|s| canonical(Field::DeviceId, s).map(|v| token.token(Field::DeviceId, v.canonical())))
        .transpose()?;
    Ok((ip, device))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::crypto::{KeyState, KeyVersion, Keyring};

    fn keys() -> (SealKey, TokenKey) {
        (
            SealKey::from_unwrapped(KeyVersion(1), &[1; 32]).unwrap(),
            TokenKey::from_unwrapped(KeyVersion(2), &[2; 32]).unwrap(),
        )
    }

    fn message(body: &str, sent_at: DateTime<Utc>) -> Received {
        Received {
            message_id: "m-1".into(),
            receipt_handle: None,
            sent_at,
            body: body.into(),
        }
    }

    #[test]
    fn a_login_keeps_plain_fields_tokens_canonical_pii_and_seals_the_original() {
        let (seal, token) = keys();
        let keys = WriteKeys {
            seal: &seal,
            token: &token,
            pending_token: None,
        };
        // Sent just before midnight UTC, received after: create_date is the sent date.
        let sent = Utc.with_ymd_and_hms(2026, 3, 1, 23, 59, 58).unwrap();
        let received = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 3).unwrap();
        let body = r#"{"user_id":"u","app_version":"2.30","ip":"010.0.0.1","device_id":"d-1","locale":null}"#;
        let Record::Login(login) = protect(keys, &message(body, sent), received) else {
            panic!("rejected")
        };
        assert_eq!(
            login.create_date,
            chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
        );
        assert_eq!(login.received_at, received);
        assert_eq!(
            (login.app_version_text.as_deref(), login.app_version),
            (Some("2.30"), Some(2_030_000))
        );
        assert_eq!(login.masked_ip, Some(token.token(Field::Ip, "10.0.0.1")));
        assert_eq!(
            (login.token_version, login.seal_version),
            (KeyVersion(2), KeyVersion(1))
        );
        assert_eq!(login.locale, None);
        assert!(
            login.pending.is_none(),
            "no rotation pending: one token slot"
        );
        let mut ring = Keyring::default();
        ring.add_seal(
            SealKey::from_unwrapped(KeyVersion(1), &[1; 32]).unwrap(),
            KeyState::Active,
        );
        let ip = ring
            .open(
                &Place::login("m-1", "u", Field::Ip),
                login.ip_sealed.as_ref().unwrap(),
            )
            .unwrap();
        assert_eq!(
            &ip[..],
            b"010.0.0.1",
            "the original spelling is what the vault keeps"
        );
    }

    #[test]
    fn while_a_token_key_is_pending_a_login_carries_both_versions_tokens() {
        let (seal, token) = keys();
        let next = TokenKey::from_unwrapped(KeyVersion(3), &[3; 32]).unwrap();
        let keys = WriteKeys {
            seal: &seal,
            token: &token,
            pending_token: Some(&next),
        };
        let body = r#"{"user_id":"u","ip":"010.0.0.1","device_id":" d-1 "}"#;
        let Record::Login(login) = protect(keys, &message(body, Utc::now()), Utc::now()) else {
            panic!("rejected")
        };
        let pending = login.pending.expect("pending tokens");
        assert_eq!(pending.version, KeyVersion(3));
        // Canonical forms, exactly as the active key's tokens (and retokenize) compute them.
        assert_eq!(pending.ip, Some(next.token(Field::Ip, "10.0.0.1")));
        assert_eq!(pending.device_id, Some(next.token(Field::DeviceId, "d-1")));
        assert_ne!(pending.ip, login.masked_ip);
    }

    #[test]
    fn a_rejection_seals_the_whole_body_and_keeps_only_the_reason() {
        let (seal, token) = keys();
        let body = r#"{"user_id": 5, "ip": "10.0.0.1"}"#;
        let Record::Quarantine(q) = protect(
            WriteKeys {
                seal: &seal,
                token: &token,
                pending_token: None,
            },
            &message(body, Utc::now()),
            Utc::now(),
        ) else {
            panic!("loaded")
        };
        assert_eq!(
            q.reason,
            "user_id must be a string or null, found a JSON number"
        );
        let mut ring = Keyring::default();
        ring.add_seal(
            SealKey::from_unwrapped(KeyVersion(1), &[1; 32]).unwrap(),
            KeyState::Active,
        );
        assert_eq!(
            &ring.open(&Place::body("m-1"), &q.body_sealed).unwrap()[..],
            body.as_bytes()
        );
    }

    #[test]
    fn an_unreadable_body_is_quarantined_with_its_exact_bytes_sealed() {
        let (seal, token) = keys();
        let bytes = b"{\"user_id\":\"u\xff\"}".to_vec();
        let mut message = message("", Utc::now());
        message.body = Body::from_bytes(bytes.clone());
        let Record::Quarantine(q) = protect(
            WriteKeys {
                seal: &seal,
                token: &token,
                pending_token: None,
            },
            &message,
            Utc::now(),
        ) else {
            panic!("loaded")
        };
        assert_eq!(q.reason, "body is not valid UTF-8");
        let mut ring = Keyring::default();
        ring.add_seal(
            SealKey::from_unwrapped(KeyVersion(1), &[1; 32]).unwrap(),
            KeyState::Active,
        );
        assert_eq!(
            &ring.open(&Place::body("m-1"), &q.body_sealed).unwrap()[..],
            &bytes[..],
            "sealed as received, not made valid"
        );
    }
}
