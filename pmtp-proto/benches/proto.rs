//! Protocol-level costs: coin sign and verify, batch signing (Merkle tree and proofs),
//! sealing and opening a pay_coins body, frame encode and decode, nonce check. `cargo bench -p pmtp-proto`; figures in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used)] // a benchmark that fails should stop loudly

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pmtp_proto::testing::samples::{self, NOW};
use pmtp_proto::*;
use std::hint::black_box;

fn coins(c: &mut Criterion) {
    let p = samples::parties();
    let mut rng = testing::TestRng(1);
    let coin = samples::coin(&p.bank, &mut rng, 8, NOW + 86_400);
    let body = coin.body().clone();
    let key = p.bank.signing.verifying_key().clone();
    let bank = coin.body().bank_id.clone();
    c.bench_function("coin_sign_rsa2048", |b| b.iter(|| Coin::mint(black_box(body.clone()), &p.bank.signing).unwrap()));
    c.bench_function("coin_verify_rsa2048", |b| b.iter(|| black_box(&coin).verify(&bank, &key, NOW).unwrap()));
}

/// The RSA-2048 primitive alone, through each library on the same test key and message:
/// the figures behind signing and verifying through ring (docs/BENCHMARKS.md).
fn rsa_primitive(c: &mut Criterion) {
    use ring::signature::{RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer, Verifier};
    use rsa::traits::PublicKeyParts;

    let der = testing::signing_key(0).to_pkcs8_der().unwrap();
    let msg = [7u8; 300];
    let mut g = c.benchmark_group("rsa2048_pkcs1v15_sha256");

    let private = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap();
    let (n, e) = (private.n_bytes().to_vec(), private.e_bytes().to_vec());
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(signer.as_ref().to_public_key());
    let sig = signer.sign(&msg);
    g.bench_function("rsa/sign", |b| b.iter(|| signer.sign(black_box(&msg)).to_vec()));
    g.bench_function("rsa/verify", |b| b.iter(|| verifier.verify(black_box(&msg), &sig).unwrap()));

    let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
    let public = RsaPublicKeyComponents { n, e };
    let rng = ring::rand::SystemRandom::new();
    let sig = sig.to_vec();
    g.bench_function("ring/sign", |b| {
        b.iter(|| {
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(&RSA_PKCS1_SHA256, &rng, black_box(&msg), &mut out).unwrap();
            out
        })
    });
    g.bench_function("ring/verify", |b| {
        b.iter(|| public.verify(&RSA_PKCS1_2048_8192_SHA256, black_box(&msg), &sig).unwrap())
    });
    g.finish();
}

/// One RSA signature plus the tree: leaf hashes, inner nodes and one proof per leaf. The
/// tree's share should grow about linearly with the batch (n log n for copying the proofs).
fn batches(c: &mut Criterion) {
    let key = testing::signing_key(0);
    let ack = |i: u64| DepositAck {
        bank_id: "bank-a".try_into().unwrap(),
        account: AccountId(i),
        request_id: [i as u8; 16],
        amount: Amount::new(i),
        coins_hash: [0; 32],
        balance: Amount::new(i),
        time: NOW,
    };
    let mut g = c.benchmark_group("sign_batch");
    g.sample_size(10);
    for n in [256u64, 1024, 4096] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(n.to_string(), |b| {
            b.iter_batched(
                || (0..n).map(ack).collect::<Vec<_>>(),
                |acks| batch::BatchSigned::sign_batch(acks, &key).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let p = samples::parties();
    let frames = samples::frames();
    let (_, plain, pay_frame) = frames.iter().find(|(id, _, _)| *id == PayCoinsRequest::ID).unwrap().clone();
    let pay: PayCoinsRequest = pay_frame.open_sealed(&p.merchant.x25519).unwrap();
    let to = p.merchant.public().parse().unwrap().x25519;
    let mut g = c.benchmark_group("pay_coins_body");
    g.throughput(Throughput::Bytes(plain.len() as u64));
    let mut rng = rng::os();
    g.bench_function("seal", |b| b.iter(|| Frame::seal_to(&mut rng, &to, black_box(&pay)).unwrap()));
    g.bench_function("open", |b| {
        b.iter(|| black_box(&pay_frame).open_sealed::<PayCoinsRequest>(&p.merchant.x25519).unwrap())
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let frames = samples::frames();
    let (_, _, f) = frames.iter().find(|(id, _, _)| *id == WithdrawCoinsResponse::ID).unwrap().clone();
    let bytes = f.to_bytes().unwrap();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| {
        let mut dst = BytesMut::with_capacity(bytes.len());
        b.iter(|| {
            dst.clear();
            black_box(&f).encode(&mut dst).unwrap();
        })
    });
    g.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&bytes[..]),
            |mut buf| FrameDecoder::default().decode(&mut buf).unwrap().unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn nonces(c: &mut Criterion) {
    let peer = samples::BUYER_ADDR;
    let mut checker = NonceChecker::new(NonceConfig::default());
    let mut rng = rng::os();
    let mut t = NOW;
    let mut i = 0u64;
    c.bench_function("nonce_check", |b| {
        b.iter(|| {
            i += 1;
            // Advance the clock so the cache stays at a steady state instead of filling.
            if i.is_multiple_of(10_000) {
                t += 1;
            }
            let n = Nonce::new(&mut rng, peer, t);
            checker.check(black_box(&n), peer, t).unwrap();
        })
    });
}

criterion_group!(benches, coins, rsa_primitive, batches, sealing, framing, nonces);
criterion_main!(benches);
