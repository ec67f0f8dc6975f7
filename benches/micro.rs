//! Micro-benchmarks of the per-event work: decode, token, seal, and decode+protect together.
//! `cargo bench --bench micro` (scripts/bench.sh runs it and records the medians).

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use piivault::crypto::{Field, KeyVersion, Place, SealKey, TokenKey, new_key_material};
use piivault::event;
use piivault::protect::{self, WriteKeys};
use piivault::source::Received;
use piivault::synth::{self, SynthOptions};

fn keys() -> (SealKey, TokenKey) {
    let seal = SealKey::from_unwrapped(KeyVersion(1), new_key_material().as_slice()).unwrap();
    let token = TokenKey::from_unwrapped(KeyVersion(1), new_key_material().as_slice()).unwrap();
    (seal, token)
}

fn per_event(c: &mut Criterion) {
    let bodies = synth::generate(SynthOptions {
        count: 1000,
        malformed_ratio: 0.0,
        seed: 3,
    })
    .bodies;
    let (seal, token) = keys();
    let write = WriteKeys {
        seal: &seal,
        token: &token,
        pending_token: None,
    };
    let mut i = 0;
    let mut next = || {
        i = (i + 1) % bodies.len();
        &bodies[i]
    };
    c.bench_function("decode", |b| {
        b.iter(|| event::decode(black_box(next())).is_ok())
    });
    c.bench_function("token (one field)", |b| {
        b.iter(|| token.token(Field::Ip, black_box("203.0.113.7")))
    });
    c.bench_function("seal (one field)", |b| {
        let place = Place::login("msg-1", "user-1", Field::Ip);
        b.iter(|| seal.seal(black_box(&place), black_box(b"203.0.113.7")))
    });
    let now = Utc::now();
    c.bench_function("decode+protect (one event)", |b| {
        b.iter(|| {
            let message = Received {
                message_id: "bench-message".to_owned(),
                receipt_handle: None,
                sent_at: now,
                body: next().clone().into(),
            };
            protect::protect(write, black_box(&message), now)
        })
    });
}

criterion_group!(benches, per_event);
criterion_main!(benches);
