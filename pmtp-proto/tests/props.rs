//! Property tests: decoders never panic on any input, and every message round-trips
//! through its frame with arbitrary field values.

#![cfg(feature = "test-keys")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should stop loudly

use bytes::BytesMut;
use pmtp_proto::coin::{CoinBody, Serial};
use pmtp_proto::frame::decode_body;
use pmtp_proto::keys::{KeyId, PublicIdentity};
use pmtp_proto::text::*;
use pmtp_proto::*;
use proptest::prelude::*;
use std::net::IpAddr;

fn secret() -> x25519_dalek::StaticSecret {
    x25519_dalek::StaticSecret::from([9u8; 32])
}

/// Tries every way a daemon could interpret `bytes`; none may panic.
fn poke(bytes: &[u8]) {
    let mut d = FrameDecoder::new(4096);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(f)) = d.decode(&mut buf) {
        let _ = f.envelope();
        let _ = f.open_sealed::<WithdrawCoinsRequest>(&secret());
        let _ = f.open_session::<DepositCoinsResponse>(&SessionKey([1; 32]));
        let _ = f.open_clear::<AskPaymentRequest>();
        let _ = f.open_reply::<PayCoinsRequest>(&SessionKey([1; 32]));
    }
    let _ = Frame::decode_exact(bytes, 4096);
    macro_rules! all { ($($t:ty),*) => { $( let _ = decode_body::<$t>(bytes); )* } }
    all!(
        WithdrawCoinsRequest,
        WithdrawCoinsResponse,
        WithdrawCoinsRefusal,
        DepositCoinsRequest,
        DepositCoinsResponse,
        DepositCoinsRefusal,
        BankStatementRequest,
        BankStatementResponse,
        BankStatementRefusal,
        ExchangeCoinsRequest,
        ExchangeCoinsResponse,
        ExchangeCoinsRefusal,
        AskPaymentRequest,
        AskPaymentResponse,
        AskPaymentRefusal,
        PayCoinsRequest,
        PayCoinsResponse,
        PayCoinsRefusal,
        frame::Envelope,
        PublicIdentity
    );
    let _ = pmtp_proto::keyfile::open_identity(bytes, b"x");
    let _ = PublicIdentity { name: Name::truncated("x"), rsa_spki: bytes.to_vec(), x25519: [1; 32] }.parse();
}

/// Everything a message is made of, drawn at random.
#[derive(Debug, Clone)]
struct Parts {
    amount: u64,
    exp: u8,
    text: String,
    u: u64,
    b16: [u8; 16],
    b32: [u8; 32],
    sig: Vec<u8>,
    addr: IpAddr,
    coins: usize,
    flag: bool,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        (any::<u64>(), 0u8..=62, "\\PC{0,40}", any::<u64>()),
        (any::<[u8; 16]>(), any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..300)),
        (any::<IpAddr>(), 0usize..5, any::<bool>()),
    )
        .prop_map(|((amount, exp, text, u), (b16, b32, sig), (addr, coins, flag))| Parts {
            amount,
            exp,
            text,
            u,
            b16,
            b32,
            sig,
            addr,
            coins,
            flag,
        })
}

fn build(p: &Parts) -> Vec<Frame> {
    let mut rng = testing::TestRng(p.u);
    let r = &mut rng;
    let to = x25519_dalek::PublicKey::from(&secret());
    let amount = Amount::new(p.amount);
    let name = Name::truncated(&p.text);
    let nonce = Nonce { random: p.b16, addr: p.addr, timestamp: p.u };
    let sk = SessionKey(p.b32);
    let sig = p.sig.clone();
    let d = Denomination::from_exponent(p.exp).unwrap();
    let coin = Coin(Signed {
        body: CoinBody {
            value: d,
            serial: Serial(p.b16),
            bank_id: BankId::truncated(&p.text),
            bank_addr: HostPort::truncated(&p.text),
            expiry: p.u,
            key_id: KeyId([p.exp; 8]),
        },
        signature: sig.clone(),
    });
    let coins = vec![coin; p.coins];
    let refusal = Refusal { code: ReasonCode(p.u as u16), text: ReasonText::truncated(&p.text), nonce };
    let ident = PublicIdentity { name: name.clone(), rsa_spki: sig.clone(), x25519: p.b32 };
    let pay = PayCoinsRequest { request_nonce: nonce, coins: coins.clone(), session_key: sk.clone(), nonce };
    let receipt = Signed {
        body: Receipt {
            merchant: name.clone(),
            merchant_fingerprint: keys::Fingerprint(p.b32),
            amount,
            description_hash: p.b32,
            coins_hash: p.b32,
            request: p.b16,
            time: p.u,
        },
        signature: sig.clone(),
    };
    let ack = pmtp_proto::batch::BatchSigned {
        body: DepositAck {
            bank_id: BankId::truncated(&p.text),
            account: AccountId(p.u),
            request_id: p.b16,
            amount,
            coins_hash: p.b32,
            balance: amount,
            time: p.u,
        },
        index: p.u as u32,
        size: p.coins as u32,
        proof: vec![p.b32; p.coins],
        signature: sig.clone(),
    };
    let entry = LedgerEntry {
        id: p.u,
        time: p.u,
        kind: if p.flag { EntryKind::Deposit } else { EntryKind::Withdrawal },
        amount,
        balance_after: amount,
        memo: BoundedString::truncated(&p.text),
    };
    vec![
        Frame::seal_to(
            r,
            &to,
            &Signed {
                body: WithdrawCoins {
                    account: AccountId(p.u),
                    name: name.clone(),
                    password: Password(BoundedString::truncated(&p.text)),
                    request_id: p.b16,
                    amount,
                    denominations: vec![d; p.coins],
                    session_key: sk.clone(),
                    nonce,
                },
                signature: sig.clone(),
            },
        )
        .unwrap(),
        Frame::seal_session(r, &sk, &WithdrawCoinsResponse { coins: coins.clone(), balance: amount, nonce }).unwrap(),
        Frame::seal_session(r, &sk, &WithdrawCoinsRefusal(refusal.clone())).unwrap(),
        Frame::seal_to(
            r,
            &to,
            &Signed {
                body: DepositCoins {
                    account: AccountId(p.u),
                    name: name.clone(),
                    request_id: p.b16,
                    coins: coins.clone(),
                    session_key: sk.clone(),
                    nonce,
                },
                signature: sig.clone(),
            },
        )
        .unwrap(),
        Frame::seal_session(r, &sk, &DepositCoinsResponse { ack, nonce }).unwrap(),
        Frame::seal_session(r, &sk, &DepositCoinsRefusal(refusal.clone())).unwrap(),
        Frame::seal_to(
            r,
            &to,
            &Signed {
                body: BankStatement {
                    account: AccountId(p.u),
                    name: name.clone(),
                    since: p.flag.then_some(p.u),
                    session_key: sk.clone(),
                    nonce,
                },
                signature: sig.clone(),
            },
        )
        .unwrap(),
        Frame::seal_session(
            r,
            &sk,
            &BankStatementResponse {
                account: AccountId(p.u),
                name: name.clone(),
                balance: amount,
                entries: vec![entry; p.coins],
                truncated: p.flag,
                nonce,
            },
        )
        .unwrap(),
        Frame::seal_session(r, &sk, &BankStatementRefusal(refusal.clone())).unwrap(),
        Frame::seal_to(
            r,
            &to,
            &ExchangeCoinsRequest {
                request_id: p.b16,
                coins: coins.clone(),
                denominations: vec![d; p.coins],
                session_key: sk.clone(),
                nonce,
            },
        )
        .unwrap(),
        Frame::seal_session(r, &sk, &ExchangeCoinsResponse { coins: coins.clone(), nonce }).unwrap(),
        Frame::seal_session(r, &sk, &ExchangeCoinsRefusal(refusal.clone())).unwrap(),
        Frame::clear(&Signed {
            body: AskPayment {
                amount,
                merchant: ident,
                description: Description::truncated(&p.text),
                accepted_banks: vec![BankId::truncated(&p.text); p.coins],
                nonce,
            },
            signature: sig.clone(),
        })
        .unwrap(),
        Frame::seal_to(r, &to, &AskPaymentResponse(pay.clone())).unwrap(),
        Frame::seal_to(r, &to, &AskPaymentRefusal { amount, request_nonce: nonce, refusal: refusal.clone() }).unwrap(),
        Frame::seal_to(r, &to, &pay).unwrap(),
        Frame::seal_session(r, &sk, &PayCoinsResponse { receipt, nonce }).unwrap(),
        Frame::seal_session(r, &sk, &PayCoinsRefusal(refusal)).unwrap(),
    ]
}

/// Opens a frame as its own type, re-seals nothing: compares the decoded value by
/// re-encoding it (every type's encoding is canonical).
fn reopen(f: &Frame, sk: &SessionKey) -> Vec<u8> {
    macro_rules! open {
        ($($t:ty => $how:ident),*) => {
            $( if f.id == <$t>::ID { return frame::encode_body(&open!(@ $how $t)).unwrap(); } )*
        };
        (@sealed $t:ty) => { f.open_sealed::<$t>(&secret()).unwrap() };
        (@session $t:ty) => { f.open_session::<$t>(sk).unwrap() };
        (@clear $t:ty) => { f.open_clear::<$t>().unwrap() };
    }
    open!(
        WithdrawCoinsRequest => sealed, WithdrawCoinsResponse => session, WithdrawCoinsRefusal => session,
        DepositCoinsRequest => sealed, DepositCoinsResponse => session, DepositCoinsRefusal => session,
        BankStatementRequest => sealed, BankStatementResponse => session, BankStatementRefusal => session,
        ExchangeCoinsRequest => sealed, ExchangeCoinsResponse => session, ExchangeCoinsRefusal => session,
        AskPaymentRequest => clear, AskPaymentResponse => sealed, AskPaymentRefusal => sealed,
        PayCoinsRequest => sealed, PayCoinsResponse => session, PayCoinsRefusal => session
    );
    panic!("unknown id {:?}", f.id)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips_through_its_frame(p in parts()) {
        let frames = build(&p);
        prop_assert_eq!(frames.len(), 18);
        let ids: Vec<_> = frames.iter().map(|f| f.id).collect();
        prop_assert_eq!(ids, MessageId::all().collect::<Vec<_>>());
        for f in &frames {
            let bytes = f.to_bytes().unwrap();
            let back = Frame::decode_exact(&bytes, frame::DEFAULT_MAX_BODY).unwrap();
            prop_assert_eq!(&back, f);
            // Decode, re-encode: byte-identical plaintext means a lossless round trip.
            let once = reopen(&back, &SessionKey(p.b32));
            let again_frame = match f.id.protection() {
                message::Protection::Clear => Frame { id: f.id, body: frame::encode_body(&frame::Envelope::Clear(once.clone())).unwrap().into() },
                _ => back.clone(),
            };
            prop_assert_eq!(reopen(&again_frame, &SessionKey(p.b32)), once);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        poke(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_valid_headers_never_panic(id in 0usize..18, body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let id = MessageId::all().nth(id).unwrap();
        let mut bytes = b"PMTP\x01".to_vec();
        bytes.push(id.byte());
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        poke(&bytes);
    }

    #[test]
    fn mutated_real_frames_never_panic(which in 0usize..18, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let (_, _, f) = &testing::samples::frames()[which];
        let mut bytes = f.to_bytes().unwrap().to_vec();
        for (i, x) in flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        poke(&bytes);
    }
}
