//! Decoding a message body into a [`LoginEvent`], or a [`Rejection`] whose text is free of PII.
//!
//! Decoding never panics and never copies input into a rejection reason: reasons are fixed texts
//! plus field names, sizes and positions.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest `user_id` the analysts' table holds (`varchar(128)`).
pub const USER_ID_MAX_CHARS: usize = 128;
/// Longest `device_type` (`varchar(32)`).
pub const DEVICE_TYPE_MAX_CHARS: usize = 32;
/// Longest `locale` (`varchar(32)`).
pub const LOCALE_MAX_CHARS: usize = 32;
/// Longest `app_version_text` (`varchar(64)`).
pub const APP_VERSION_MAX_CHARS: usize = 64;
/// Longest `device_id` accepted; it is only stored tokenised and sealed, but unbounded input is a
/// denial-of-service vector.
pub const DEVICE_ID_MAX_CHARS: usize = 256;
/// Longest `ip` text accepted (the longest IPv6 spelling with an IPv4 tail is 45 characters).
pub const IP_MAX_CHARS: usize = 64;
/// Largest body accepted: a login event is a few hundred bytes; anything near SQS's 256 KiB is
/// not one, and is quarantined before it is parsed.
pub const BODY_MAX_BYTES: usize = 64 * 1024;
/// The fields a login event has; a duplicate of one of them is named in the reason.
const KNOWN_FIELDS: [&str; 6] = [
    "user_id",
    "app_version",
    "device_type",
    "ip",
    "locale",
    "device_id",
];

/// One valid login event. Plain fields go to the analysts' table as they are; PII fields only
/// ever leave this type as tokens and sealed values.
pub struct LoginEvent {
    /// Who logged in; required and non-empty.
    pub user_id: String,
    /// The version string exactly as sent ("2.3.0", "0.96").
    pub app_version: Option<String>,
    /// "android", "ios", …
    pub device_type: Option<String>,
    /// Locale code; often null in real data.
    pub locale: Option<String>,
    /// Client IP address (PII). `None` when null, missing, empty or whitespace only.
    pub ip: Option<Pii>,
    /// Device identifier (PII). `None` when null, missing, empty or whitespace only: a blank id
    /// names no device, so it gets no token and nothing is sealed (otherwise every client that
    /// sends `""` would look like one device shared by all of them). Case-sensitive: see
    /// [`Pii::text`].
    pub device_id: Option<Pii>,
}

impl fmt::Debug for LoginEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginEvent")
            .field("user_id", &self.user_id)
            .field("app_version", &self.app_version)
            .field("device_type", &self.device_type)
            .field("locale", &self.locale)
            .finish_non_exhaustive()
    }
}

/// A PII value: the original text (what an auditor gets back) and its canonical form (what the
/// token is computed from). Wiped on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pii {
    original: String,
    canonical: String,
}

impl Pii {
    /// An IP address: canonical is the standard spelling, so `010.001.1.1` and `10.1.1.1`, or two
    /// spellings of one IPv6 address (and an IPv4-mapped IPv6 address and its IPv4), are equal.
    pub fn ip(original: &str) -> Option<Pii> {
        let canonical = canonical_ip(original)?.to_string();
        Some(Pii {
            original: original.to_owned(),
            canonical,
        })
    }

    /// Any other identifier: canonical is trimmed and Unicode NFC. It is **not** case-folded:
    /// device ids are opaque identifiers whose case producers preserve, so `ABC-1` and `abc-1`
    /// are two devices with two tokens (folding could merge unrelated users into one shared
    /// device). [`decode`] never calls this with a blank value.
    pub fn text(original: &str) -> Pii {
        let canonical = original.trim().nfc().collect();
        Pii {
            original: original.to_owned(),
            canonical,
        }
    }

    /// The text as received.
    pub fn original(&self) -> &str {
        &self.original
    }

    /// The form tokens are computed from.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

impl fmt::Debug for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pii(..)")
    }
}

/// Parses an IP address leniently (surrounding spaces, IPv4 octets with leading zeros read as
/// decimal) and maps IPv4-mapped IPv6 addresses to IPv4.
pub fn canonical_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let addr = match text.parse::<IpAddr>() {
        Ok(addr) => addr,
        Err(_) => IpAddr::V4(lenient_ipv4(text)?),
    };
    Some(match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    })
}

/// Dotted-quad with 1–3 decimal digits per octet (std rejects leading zeros as ambiguous; login
/// producers that zero-pad mean decimal).
fn lenient_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Why a message body is not a [`LoginEvent`]. Its text never contains input values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not valid JSON (position only).
    NotJson { line: usize, column: usize },
    /// Valid JSON, but not an object.
    NotAnObject { found: &'static str },
    /// `user_id` is absent or null.
    MissingUserId,
    /// A field holds a JSON type other than string (or null).
    WrongType {
        field: &'static str,
        found: &'static str,
    },
    /// A field is longer than its column allows.
    TooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
    /// `user_id` is empty or only whitespace.
    EmptyUserId,
    /// A field contains U+0000, which Postgres text cannot hold.
    ContainsNul { field: &'static str },
    /// `ip` is not an IPv4 or IPv6 address.
    InvalidIp,
    /// The body is larger than [`BODY_MAX_BYTES`].
    TooLarge { bytes: usize, max: usize },
    /// The body is not UTF-8 (a backfill line; SQS bodies are always text).
    NotUtf8,
    /// A backfill line is longer than [`BODY_MAX_BYTES`]; only its first `kept` bytes were read.
    LineTooLong { bytes: u64, max: usize, kept: usize },
    /// A key appears twice in the object (parsers disagree on which value wins).
    DuplicateField { field: Option<&'static str> },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotJson { line, column } => {
                write!(
                    f,
                    "body is not valid JSON (error at line {line}, column {column})"
                )
            }
            Rejection::NotAnObject { found } => write!(f, "body is a JSON {found}, not an object"),
            Rejection::MissingUserId => f.write_str("user_id is missing or null"),
            Rejection::WrongType { field, found } => {
                write!(f, "{field} must be a string or null, found a JSON {found}")
            }
            Rejection::TooLong { field, chars, max } => {
                write!(
                    f,
                    "{field} has {chars} characters, more than the {max} allowed"
                )
            }
            Rejection::EmptyUserId => f.write_str("user_id is empty"),
            Rejection::ContainsNul { field } => write!(f, "{field} contains a NUL character"),
            Rejection::InvalidIp => f.write_str("ip is not a valid IPv4 or IPv6 address"),
            Rejection::TooLarge { bytes, max } => {
                write!(f, "body is {bytes} bytes, more than the {max} allowed")
            }
            Rejection::NotUtf8 => f.write_str("body is not valid UTF-8"),
            Rejection::LineTooLong { bytes, max, kept } => write!(
                f,
                "body is {bytes} bytes, more than the {max} allowed (only its first {kept} bytes are sealed)"
            ),
            Rejection::DuplicateField { field: Some(field) } => {
                write!(f, "field {field} appears more than once")
            }
            // An unknown key is input: never echo it.
            Rejection::DuplicateField { field: None } => {
                f.write_str("a field appears more than once")
            }
        }
    }
}

/// Decodes one message body. Unknown fields are ignored (producers may add fields); null or
/// missing optional fields become `None`. A blank `ip` or `device_id` (empty, or only Unicode
/// whitespace such as `"  "` or `"\t"`) is a missing value too: `None`, stored as NULL with no
/// token and nothing sealed. Length and NUL checks run first, so an overlong blank value is still
/// rejected.
pub fn decode(body: &str) -> Result<LoginEvent, Rejection> {
    if body.len() > BODY_MAX_BYTES {
        return Err(Rejection::TooLarge {
            bytes: body.len(),
            max: BODY_MAX_BYTES,
        });
    }
    let text = body.strip_prefix('\u{feff}').unwrap_or(body);
    let value: Value = serde_json::from_str(text).map_err(|e| Rejection::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(object) = value else {
        return Err(Rejection::NotAnObject {
            found: json_kind(&value),
        });
    };
    if let Some(field) = duplicate_key(text) {
        return Err(Rejection::DuplicateField { field });
    }
    let user_id =
        string_field(&object, "user_id", USER_ID_MAX_CHARS)?.ok_or(Rejection::MissingUserId)?;
    if user_id.trim().is_empty() {
        return Err(Rejection::EmptyUserId);
    }
    let ip = match non_blank(string_field(&object, "ip", IP_MAX_CHARS)?) {
        Some(text) => Some(Pii::ip(text).ok_or(Rejection::InvalidIp)?),
        None => None,
    };
    Ok(LoginEvent {
        user_id: user_id.to_owned(),
        app_version: string_field(&object, "app_version", APP_VERSION_MAX_CHARS)?
            .map(str::to_owned),
        device_type: string_field(&object, "device_type", DEVICE_TYPE_MAX_CHARS)?
            .map(str::to_owned),
        locale: string_field(&object, "locale", LOCALE_MAX_CHARS)?.map(str::to_owned),
        ip,
        device_id: non_blank(string_field(&object, "device_id", DEVICE_ID_MAX_CHARS)?)
            .map(Pii::text),
    })
}

/// `None` for an empty or whitespace-only value (the same test as for a blank `user_id`).
fn non_blank(value: Option<&str>) -> Option<&str> {
    value.filter(|text| !text.trim().is_empty())
}

/// The first key that appears twice at the top level of an object (`Some(None)` for an unknown
/// key). `serde_json::Value` silently keeps the last value; other parsers keep the first.
fn duplicate_key(object_text: &str) -> Option<Option<&'static str>> {
    struct Keys(Option<Option<&'static str>>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    // Reads the whole object: returning at the first repeat left the map half
                    // read, serde_json then failed, and the repeat went unnoticed.
                    let mut seen = std::collections::HashSet::new();
                    let mut first = None;
                    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        if first.is_none() && seen.contains(&key) {
                            first = Some(KNOWN_FIELDS.iter().find(|f| **f == key).copied());
                        }
                        seen.insert(key);
                    }
                    Ok(Keys(first))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_str::<Keys>(object_text)
        .ok()
        .and_then(|k| k.0)
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<&'a str>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            let chars = text.chars().count();
            if chars > max {
                Err(Rejection::TooLong { field, chars, max })
            } else if text.contains('\0') {
                Err(Rejection::ContainsNul { field })
            } else {
                Ok(Some(text))
            }
        }
        Some(other) => Err(Rejection::WrongType {
            field,
            found: json_kind(other),
        }),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The integer kept in `user_logins.app_version` for analysts' range queries: for a dotted
/// version of 1–3 numeric parts, each 0–999, `major·1 000 000 + minor·1 000 + patch`
/// ("2.3.0" → 2 003 000, "0.96" → 96 000, "2.30" → 2 030 000). Order-preserving in the version's
/// numeric order; anything else (letters, four parts, a part above 999) gives `None` and only
/// `app_version_text` holds it.
pub fn app_version_number(text: &str) -> Option<i32> {
    let mut parts = text.split('.');
    let mut number = 0i32;
    for weight in [1_000_000, 1_000, 1] {
        let Some(part) = parts.next() else {
            break;
        };
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        number += part.parse::<i32>().ok()? * weight;
    }
    parts.next().is_none().then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_sample_login_with_null_locale() {
        let event = decode(
            r#"{"user_id":"u1","app_version":"2.3.0","device_type":"ios","ip":"1.2.3.4","locale":null,"device_id":"593-47-5928"}"#,
        )
        .unwrap();
        assert_eq!(event.user_id, "u1");
        assert_eq!(event.app_version.as_deref(), Some("2.3.0"));
        assert_eq!(event.locale, None);
        assert_eq!(event.ip.as_ref().unwrap().canonical(), "1.2.3.4");
        assert_eq!(event.device_id.as_ref().unwrap().original(), "593-47-5928");
    }

    #[test]
    fn missing_optional_fields_are_none_not_rejections() {
        let event = decode(r#"{"user_id":"u1"}"#).unwrap();
        assert!(event.ip.is_none() && event.device_id.is_none() && event.app_version.is_none());
    }

    #[test]
    fn rejections_name_the_problem_without_the_value() {
        let cases = [
            (r#"{"user_id": "u1", "ip": "#, "body is not valid JSON"),
            (r#""a string""#, "body is a JSON string, not an object"),
            (r#"[1,2]"#, "body is a JSON array, not an object"),
            (r#"42"#, "body is a JSON number, not an object"),
            (
                r#"{"foo":"oops_wrong_msg_type","bar":"123"}"#,
                "user_id is missing or null",
            ),
            (r#"{"user_id":null}"#, "user_id is missing or null"),
            (r#"{"user_id":"  "}"#, "user_id is empty"),
            (
                r#"{"user_id":7}"#,
                "user_id must be a string or null, found a JSON number",
            ),
            (
                r#"{"user_id":"u","ip":"999.1.1.1"}"#,
                "ip is not a valid IPv4 or IPv6 address",
            ),
            (
                r#"{"user_id":"u","locale":"a\u0000b"}"#,
                "locale contains a NUL character",
            ),
        ];
        for (body, expected) in cases {
            let reason = decode(body).map(|_| ()).unwrap_err().to_string();
            assert!(reason.starts_with(expected), "{body}: {reason}");
            assert!(
                !reason.contains("999.1.1.1") && !reason.contains("oops"),
                "{reason}"
            );
        }
        let long = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
        assert_eq!(
            decode(&long).map(|_| ()).unwrap_err(),
            Rejection::TooLong {
                field: "user_id",
                chars: 129,
                max: 128
            }
        );
    }

    #[test]
    fn blank_ip_and_device_id_are_missing_values() {
        for blank in [
            "", " ", "  ", "\t", "\n", "\r\n", " \t ", "\u{a0}", "\u{3000}",
        ] {
            let body =
                serde_json::json!({"user_id": "u", "ip": blank, "device_id": blank}).to_string();
            let event = decode(&body).unwrap_or_else(|r| panic!("{blank:?}: {r}"));
            assert!(event.ip.is_none(), "ip {blank:?}");
            assert!(event.device_id.is_none(), "device_id {blank:?}");
        }
        // A value with content around the spaces is still a value.
        let event = decode(r#"{"user_id":"u","ip":" 1.2.3.4 ","device_id":" d "}"#).unwrap();
        assert_eq!(event.ip.as_ref().unwrap().canonical(), "1.2.3.4");
        assert_eq!(event.device_id.as_ref().unwrap().original(), " d ");
        assert_eq!(event.device_id.as_ref().unwrap().canonical(), "d");
        // Blank is not a licence to skip the other checks.
        let long_blank = format!(r#"{{"user_id":"u","ip":"{}"}}"#, " ".repeat(65));
        assert!(matches!(
            decode(&long_blank),
            Err(Rejection::TooLong { field: "ip", .. })
        ));
        assert!(matches!(
            decode(r#"{"user_id":"u","device_id":" \u0000 "}"#),
            Err(Rejection::ContainsNul { field: "device_id" })
        ));
        assert!(matches!(
            decode(r#"{"user_id":"u","device_id":7}"#),
            Err(Rejection::WrongType { .. })
        ));
        // Zero-width characters are not whitespace: such an id is kept (and tokenised).
        assert!(
            decode(r#"{"user_id":"u","device_id":"\u200b"}"#)
                .unwrap()
                .device_id
                .is_some()
        );
    }

    #[test]
    fn device_ids_are_case_sensitive() {
        let upper = Pii::text("ABC-1");
        let lower = Pii::text("abc-1");
        assert_ne!(upper.canonical(), lower.canonical());
        assert_eq!(Pii::text(" ABC-1 ").canonical(), "ABC-1");
    }

    #[test]
    fn a_byte_order_mark_is_tolerated() {
        assert_eq!(decode("\u{feff}{\"user_id\":\"u\"}").unwrap().user_id, "u");
    }

    #[test]
    fn ip_spellings_share_a_canonical_form() {
        let same = |a: &str, b: &str| assert_eq!(canonical_ip(a), canonical_ip(b), "{a} vs {b}");
        same("1.2.3.4", "001.002.003.004");
        same("1.2.3.4", " 1.2.3.4 ");
        same("1.2.3.4", "::ffff:1.2.3.4");
        same("2001:db8::1", "2001:0DB8:0000:0000:0000:0000:0000:0001");
        assert_eq!(
            canonical_ip("2001:0db8::0001").unwrap().to_string(),
            "2001:db8::1"
        );
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.-4",
            "abc",
            "1.2.3.0004",
        ] {
            assert_eq!(canonical_ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn app_version_number_preserves_order_and_distinguishes_spellings() {
        assert_eq!(app_version_number("2.3.0"), Some(2_003_000));
        assert_eq!(app_version_number("0.96"), Some(96_000));
        assert_eq!(app_version_number("2.30"), Some(2_030_000));
        assert_eq!(app_version_number("2.3"), Some(2_003_000));
        assert_eq!(app_version_number("7"), Some(7_000_000));
        for bad in ["", "2.3.0.1", "2.x", "1000.0", "2..3", "-1"] {
            assert_eq!(app_version_number(bad), None, "{bad}");
        }
        let ordered = [
            "0.1.1", "0.16", "0.96", "1.0.3", "2.0", "2.3.0", "2.29", "2.30", "10.0",
        ];
        let numbers: Vec<_> = ordered
            .iter()
            .map(|v| app_version_number(v).unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    }

    #[test]
    fn arbitrary_input_never_panics() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let valid = r#"{"user_id":"u","app_version":"1.2.3","device_type":"ios","ip":"::1","locale":"FR","device_id":"x"}"#;
        let alphabet: Vec<char> = "{}[]\",:0123456789.-eE nultrfa\\u\u{0}\u{feff}é😀\u{202e}"
            .chars()
            .collect();
        for _ in 0..20_000 {
            let mut text: Vec<char> = valid.chars().collect();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..=text.len());
                match rng.random_range(0..3) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    _ => text.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            let _ = decode(&text.into_iter().collect::<String>());
        }
        let deep = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
        assert!(
            matches!(decode(&deep), Err(Rejection::NotJson { .. })),
            "recursion limit, no overflow"
        );
        let big = format!(r#"{{"user_id":"u","device_id":"{}"}}"#, "d".repeat(1 << 20));
        assert!(
            matches!(decode(&big), Err(Rejection::TooLarge { .. })),
            "1 MiB body"
        );
        let long = format!(r#"{{"user_id":"u","device_id":"{}"}}"#, "d".repeat(4096));
        assert!(matches!(
            decode(&long),
            Err(Rejection::TooLong {
                field: "device_id",
                ..
            })
        ));
        assert!(decode(r#"{"user_id":"\ud800"}"#).is_err(), "lone surrogate");
    }

    #[test]
    fn duplicate_keys_and_oversized_bodies_are_rejected_without_echoing_input() {
        // Wherever the repeat stands: first keys, the middle, the end.
        for body in [
            r#"{"user_id":"a","user_id":"b"}"#,
            r#"{"user_id":"u-a","user_id":"u-b","ip":"10.9.8.6","device_id":"X"}"#,
            r#"{"ip":"10.9.8.6","user_id":"u-a","device_id":"X","user_id":"u-b","locale":"fr"}"#,
            r#"{"ip":"10.9.8.6","device_id":"X","user_id":"u-a","user_id":"u-b"}"#,
        ] {
            let dup = decode(body).map(|_| ()).unwrap_err();
            assert_eq!(
                dup.to_string(),
                "field user_id appears more than once",
                "{body}"
            );
        }
        let first = decode(r#"{"ip":"10.0.0.1","ip":"10.0.0.2","user_id":"a","user_id":"b"}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            first.to_string(),
            "field ip appears more than once",
            "the first repeat"
        );
        let secret = decode(r#"{"user_id":"a","alice@example.com":1,"alice@example.com":2}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(secret.to_string(), "a field appears more than once");
        assert!(
            decode(r#"{"user_id":"a","x":{"k":1,"k":2}}"#).is_ok(),
            "only top-level keys are checked"
        );
        let big = format!(
            r#"{{"user_id":"a","pad":"{}"}}"#,
            "p".repeat(BODY_MAX_BYTES)
        );
        assert!(matches!(decode(&big), Err(Rejection::TooLarge { .. })));
    }
}
