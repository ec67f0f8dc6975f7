//! Synthetic login events for the demo and benchmarks: realistic, deterministic for a seed, and
//! with a known share of devices and IPs shared across users so duplicate queries find groups.

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Share of events whose device comes from a small pool used by many users.
pub const SHARED_DEVICE_SHARE: f64 = 0.10;
/// Share of events whose IP comes from a small pool used by many users.
pub const SHARED_IP_SHARE: f64 = 0.10;
/// Share of events with a null locale (the sample has 29 %).
pub const NULL_LOCALE_SHARE: f64 = 0.30;
/// Share of valid IPs that are IPv6.
pub const IPV6_SHARE: f64 = 0.15;

const LOCALES: [&str; 12] = [
    "RU", "PH", "ID", "FR", "PT", "US", "DE", "BR", "JP", "IN", "CN", "GB",
];

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct SynthOptions {
    /// Number of message bodies.
    pub count: usize,
    /// Share of malformed bodies (exactly `round(count × ratio)` of them, spread evenly).
    pub malformed_ratio: f64,
    /// Random seed: equal options give equal bodies.
    pub seed: u64,
}

/// Generated bodies and how many of them are malformed.
pub struct Synth {
    /// Message bodies in send order.
    pub bodies: Vec<String>,
    /// How many bodies are malformed.
    pub malformed: usize,
}

/// Generates message bodies.
pub fn generate(options: SynthOptions) -> Synth {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let pool = (options.count / 100).max(3);
    let shared_devices: Vec<String> = (0..pool).map(|_| device_id(&mut rng)).collect();
    let shared_ips: Vec<String> = (0..pool).map(|_| ip(&mut rng)).collect();
    let mut users: Vec<String> = Vec::new();
    let ratio = options.malformed_ratio.clamp(0.0, 1.0);
    let mut malformed = 0;
    let mut bodies = Vec::with_capacity(options.count);
    for i in 0..options.count {
        // Exactly round(count × ratio) malformed bodies, evenly spaced.
        let due = ((i + 1) as f64 * ratio).round() as usize;
        if due > malformed {
            malformed += 1;
            bodies.push(malformed_body(&mut rng));
            continue;
        }
        let user = if !users.is_empty() && rng.random_bool(0.2) {
            users[rng.random_range(0..users.len())].clone()
        } else {
            let user = uuid(&mut rng);
            users.push(user.clone());
            user
        };
        let device = if rng.random_bool(SHARED_DEVICE_SHARE) {
            shared_devices[rng.random_range(0..pool)].clone()
        } else {
            device_id(&mut rng)
        };
        let address = if rng.random_bool(SHARED_IP_SHARE) {
            shared_ips[rng.random_range(0..pool)].clone()
        } else {
            ip(&mut rng)
        };
        let locale = (!rng.random_bool(NULL_LOCALE_SHARE))
            .then(|| LOCALES[rng.random_range(0..LOCALES.len())]);
        let device_type = match rng.random_range(0..100) {
            0..2 => None,
            2..57 => Some("android"),
            _ => Some("ios"),
        };
        let body = json!({
            "user_id": user,
            "app_version": app_version(&mut rng),
            "device_type": device_type,
            "ip": address,
            "locale": locale,
            "device_id": device,
        });
        bodies.push(body.to_string());
    }
    Synth { bodies, malformed }
}

fn uuid(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn device_id(rng: &mut impl Rng) -> String {
    format!(
        "{:03}-{:02}-{:04}",
        rng.random_range(0..1000),
        rng.random_range(0..100),
        rng.random_range(0..10000)
    )
}

fn ip(rng: &mut impl Rng) -> String {
    if rng.random_bool(IPV6_SHARE) {
        let groups: [u16; 6] = rng.random();
        format!(
            "2001:db8:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
            groups[0], groups[1], groups[2], groups[3], groups[4], groups[5]
        )
    } else {
        let o: [u8; 4] = rng.random();
        format!("{}.{}.{}.{}", o[0].max(1), o[1], o[2], o[3])
    }
}

fn app_version(rng: &mut impl Rng) -> String {
    let major = rng.random_range(0..4);
    if rng.random_bool(0.6) {
        format!(
            "{major}.{}.{}",
            rng.random_range(0..10),
            rng.random_range(0..10)
        )
    } else {
        format!("{major}.{:02}", rng.random_range(0..100))
    }
}

fn malformed_body(rng: &mut impl Rng) -> String {
    match rng.random_range(0..5) {
        0 => r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.to_owned(),
        1 => format!(r#"{{"user_id": "{}", "ip": "#, uuid(rng)),
        2 => json!({"user_id": uuid(rng), "app_version": 2.3, "ip": ip(rng)}).to_string(),
        3 => json!({"user_id": uuid(rng), "ip": "999.1.2.3", "device_id": device_id(rng)})
            .to_string(),
        _ => json!([uuid(rng), ip(rng)]).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    #[test]
    fn deterministic_for_a_seed_and_exact_malformed_share() {
        let options = SynthOptions {
            count: 1000,
            malformed_ratio: 0.05,
            seed: 7,
        };
        let a = generate(options);
        assert_eq!(a.bodies, generate(options).bodies);
        assert_ne!(
            a.bodies,
            generate(SynthOptions { seed: 8, ..options }).bodies
        );
        assert_eq!(a.bodies.len(), 1000);
        assert_eq!(a.malformed, 50);
        let rejected = a.bodies.iter().filter(|b| decode(b).is_err()).count();
        assert_eq!(
            rejected, 50,
            "every malformed body is rejected, every other one decodes"
        );
    }

    #[test]
    fn realistic_mix_with_shared_devices_and_ips() {
        let s = generate(SynthOptions {
            count: 2000,
            malformed_ratio: 0.0,
            seed: 1,
        });
        let events: Vec<_> = s.bodies.iter().map(|b| decode(b).unwrap()).collect();
        let null_locales = events.iter().filter(|e| e.locale.is_none()).count();
        assert!((450..750).contains(&null_locales), "{null_locales}");
        let v6 = events
            .iter()
            .filter(|e| e.ip.as_ref().unwrap().canonical().contains(':'))
            .count();
        assert!(v6 > 100, "{v6}");
        let mut per_device =
            std::collections::HashMap::<&str, std::collections::HashSet<&str>>::new();
        for e in &events {
            per_device
                .entry(e.device_id.as_ref().unwrap().canonical())
                .or_default()
                .insert(&e.user_id);
        }
        let shared = per_device.values().filter(|users| users.len() > 1).count();
        assert!(shared >= 10, "{shared} devices shared across users");
    }
}
