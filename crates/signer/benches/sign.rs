//! Cost of signing one 1 KiB delivery body: Standard Webhooks v1 (HMAC-SHA256) beside v1a
//! (Ed25519), and a plain HMAC-SHA256 of the same bytes (the floor: everything above it is
//! formatting and base64).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use hookrelay_signer::{Ed25519Key, Secret, SignatureHeaders, SigningKey};
use sha2::Sha256;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let body = vec![b'x'; 1024];
    let secret = Secret::generate().unwrap();
    let mut group = c.benchmark_group("sign_1KiB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("standard_v1", |b| {
        b.iter(|| secret.sign_standard(black_box("msg_2b6K9QZ"), black_box(1_700_000_000), &body))
    });
    group.bench_function("both_schemes_headers", |b| {
        b.iter(|| {
            SignatureHeaders::sign(&[&secret], black_box("msg_2b6K9QZ"), 1_700_000_000, &body)
        })
    });
    let ed25519 = Ed25519Key::generate().unwrap();
    group.bench_function("ed25519_v1a", |b| {
        b.iter(|| ed25519.sign_v1a(black_box("msg_2b6K9QZ"), black_box(1_700_000_000), &body))
    });
    let keys = [SigningKey::Ed25519(ed25519.clone())];
    group.bench_function("ed25519_headers", |b| {
        b.iter(|| {
            SignatureHeaders::sign_keys(&keys, black_box("msg_2b6K9QZ"), 1_700_000_000, &body)
        })
    });
    // What a worker does before signing: parse the opened key text (derives the public key).
    let stored = ed25519.to_private_text();
    group.bench_function("ed25519_parse_stored_key", |b| {
        b.iter(|| SigningKey::parse(black_box(&stored)).unwrap())
    });
    let stored_secret = secret.as_str().to_owned();
    group.bench_function("hmac_parse_stored_secret", |b| {
        b.iter(|| SigningKey::parse(black_box(&stored_secret)).unwrap())
    });
    group.bench_function("plain_hmac_sha256", |b| {
        b.iter(|| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&[7u8; 32])).unwrap();
            mac.update(black_box(&body));
            mac.finalize().into_bytes()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
