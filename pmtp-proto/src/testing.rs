//! Pre-generated keys for tests and benchmarks of every payme crate, so that no test pays
//! for RSA key generation. Feature `test-keys`; never for production (the private keys
//! are public in this repository).

use crate::keys::{Identity, SigningKey};
use crate::text::Name;

const RSA_KEYS: [&[u8]; 7] = [
    include_bytes!("../testdata/rsa-0.der"),
    include_bytes!("../testdata/rsa-1.der"),
    include_bytes!("../testdata/rsa-2.der"),
    include_bytes!("../testdata/rsa-3.der"),
    include_bytes!("../testdata/rsa-4.der"),
    include_bytes!("../testdata/rsa-5.der"),
    include_bytes!("../testdata/rsa-6.der"),
];

/// A pool of RSA-2048 keys that test builds of the daemons use instead of generating one
/// at every `init` (see [`pool_identity`]).
const POOL: [&[u8]; 32] = [
    include_bytes!("../testdata/pool/rsa-00.der"),
    include_bytes!("../testdata/pool/rsa-01.der"),
    include_bytes!("../testdata/pool/rsa-02.der"),
    include_bytes!("../testdata/pool/rsa-03.der"),
    include_bytes!("../testdata/pool/rsa-04.der"),
    include_bytes!("../testdata/pool/rsa-05.der"),
    include_bytes!("../testdata/pool/rsa-06.der"),
    include_bytes!("../testdata/pool/rsa-07.der"),
    include_bytes!("../testdata/pool/rsa-08.der"),
    include_bytes!("../testdata/pool/rsa-09.der"),
    include_bytes!("../testdata/pool/rsa-10.der"),
    include_bytes!("../testdata/pool/rsa-11.der"),
    include_bytes!("../testdata/pool/rsa-12.der"),
    include_bytes!("../testdata/pool/rsa-13.der"),
    include_bytes!("../testdata/pool/rsa-14.der"),
    include_bytes!("../testdata/pool/rsa-15.der"),
    include_bytes!("../testdata/pool/rsa-16.der"),
    include_bytes!("../testdata/pool/rsa-17.der"),
    include_bytes!("../testdata/pool/rsa-18.der"),
    include_bytes!("../testdata/pool/rsa-19.der"),
    include_bytes!("../testdata/pool/rsa-20.der"),
    include_bytes!("../testdata/pool/rsa-21.der"),
    include_bytes!("../testdata/pool/rsa-22.der"),
    include_bytes!("../testdata/pool/rsa-23.der"),
    include_bytes!("../testdata/pool/rsa-24.der"),
    include_bytes!("../testdata/pool/rsa-25.der"),
    include_bytes!("../testdata/pool/rsa-26.der"),
    include_bytes!("../testdata/pool/rsa-27.der"),
    include_bytes!("../testdata/pool/rsa-28.der"),
    include_bytes!("../testdata/pool/rsa-29.der"),
    include_bytes!("../testdata/pool/rsa-30.der"),
    include_bytes!("../testdata/pool/rsa-31.der"),
];

/// How many pool identities exist: a test gives each daemon it starts another one.
pub const POOL_SIZE: usize = POOL.len();

/// Pool identity `i` (modulo the pool's size) named `name`, with its own X25519 secret:
/// what `payme-bank init` and `payme-wallet init` use in test builds when told to (the
/// private keys are public in this repository).
#[allow(clippy::expect_used)]
pub fn pool_identity(i: usize, name: &str) -> Identity {
    let i = i % POOL_SIZE;
    let mut x = [0xa5u8; 32];
    x[1] = i as u8;
    Identity {
        name: Name::new(name).expect("short name"),
        signing: SigningKey::from_pkcs8_der(POOL[i]).expect("pool key parses"),
        x25519: x25519_dalek::StaticSecret::from(x),
    }
}

/// How many test identities exist; index 6 is a 3072-bit key.
pub const COUNT: usize = RSA_KEYS.len();

/// The `i`th test RSA key (panics on an index out of range: tests only).
#[allow(clippy::expect_used)]
pub fn signing_key(i: usize) -> SigningKey {
    SigningKey::from_pkcs8_der(RSA_KEYS[i]).expect("test key parses")
}

/// The `i`th test identity, named `test-{i}`, with a fixed X25519 secret.
#[allow(clippy::expect_used)]
pub fn identity(i: usize) -> Identity {
    named_identity(i, &format!("test-{i}"))
}

/// The `i`th test keys under another name.
#[allow(clippy::expect_used)]
pub fn named_identity(i: usize, name: &str) -> Identity {
    let mut x = [0x5au8; 32];
    // Byte 1, not byte 0: clamping clears the low three bits of byte 0, which would
    // make keys 0 and 2 the same scalar.
    x[1] = i as u8;
    Identity {
        name: Name::new(name).expect("short name"),
        signing: signing_key(i),
        x25519: x25519_dalek::StaticSecret::from(x),
    }
}

#[cfg(test)]
mod pool_tests {
    #[test]
    fn pool_keys_are_distinct_2048_bit_keys() {
        let ids: Vec<_> = (0..super::POOL_SIZE).map(|i| super::pool_identity(i, "x").public()).collect();
        for (i, a) in ids.iter().enumerate() {
            assert_eq!(super::pool_identity(i, "x").signing.verifying_key().bits(), 2048);
            for b in &ids[i + 1..] {
                assert_ne!(a.rsa_spki, b.rsa_spki);
                assert_ne!(a.x25519, b.x25519);
            }
        }
    }
}

/// A deterministic `CryptoRng` for golden vectors (SplitMix64). Not random: tests only.
#[derive(Debug, Clone)]
pub struct TestRng(pub u64);

impl rand_core::TryRng for TestRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|v| v as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
impl rand_core::TryCryptoRng for TestRng {}

/// Fixed inputs for golden vectors and examples: one of each of the 18 messages.
pub mod samples {
    use super::*;
    use crate::coin::{Coin, CoinBody, Serial};
    use crate::denomination::Denomination;
    use crate::frame::Frame;
    use crate::keys::Signed;
    use crate::message::*;
    use crate::nonce::Nonce;
    use crate::refusal::{reason_text, ReasonCode, Refusal};
    use crate::seal::SessionKey;
    use crate::text::*;
    use crate::Amount;
    use std::net::{IpAddr, Ipv4Addr};

    pub const NOW: u64 = 1_800_000_000;
    pub const BUYER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    pub const MERCHANT_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    pub const BANK_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

    /// The parties: bank (key 0), buyer (key 1), merchant (key 2).
    pub struct Parties {
        pub bank: Identity,
        pub buyer: Identity,
        pub merchant: Identity,
    }

    pub fn parties() -> Parties {
        Parties {
            bank: named_identity(0, "bank-a"),
            buyer: named_identity(1, "alice"),
            merchant: named_identity(2, "bob's books"),
        }
    }

    #[allow(clippy::expect_used)]
    pub fn coin(bank: &Identity, rng: &mut TestRng, value: u64, expiry: u64) -> Coin {
        let body = CoinBody {
            value: Denomination::try_from(value).expect("power of two"),
            serial: Serial::random(rng),
            bank_id: BankId::new(bank.name.as_str()).expect("short"),
            bank_addr: HostPort::new("127.0.0.1:8000").expect("short"),
            expiry,
            key_id: bank.signing.verifying_key().key_id(),
        };
        Coin::mint(body, &bank.signing).expect("test key signs")
    }

    /// One frame per identifier, in wire order, with its plaintext encoding, made with a
    /// seeded generator so the bytes are the same on every run.
    #[allow(clippy::expect_used)]
    pub fn frames() -> Vec<(MessageId, Vec<u8>, Frame)> {
        let p = parties();
        let mut rng = TestRng(42);
        let r = &mut rng;
        let bank_x = p.bank.public().parse().expect("valid").x25519;
        let merchant_x = p.merchant.public().parse().expect("valid").x25519;
        let nonce = |rng: &mut TestRng, addr| Nonce::new(rng, addr, NOW);
        let coins = vec![coin(&p.bank, r, 8, NOW + 30 * 86_400), coin(&p.bank, r, 2, NOW + 30 * 86_400)];
        let refusal = |rng: &mut TestRng, code, text: &str, addr| Refusal {
            code,
            text: reason_text(text),
            nonce: nonce(rng, addr),
        };
        let mut out = Vec::new();
        let mut push = |id: MessageId, plain: Vec<u8>, frame: Frame| out.push((id, plain, frame));
        let enc = |m: &dyn erased::Enc| m.enc();

        // withdraw_coins
        let sk = SessionKey::generate(r);
        let w = Signed::sign(
            WithdrawCoins {
                account: AccountId(1001),
                name: Name::new("alice").expect("short"),
                password: Password::new("open sesame").expect("short"),
                request_id: [0x11; 16],
                amount: Amount::new(10),
                denominations: vec![],
                session_key: sk.clone(),
                nonce: nonce(r, BUYER_ADDR),
            },
            &p.buyer.signing,
        )
        .expect("sign");
        push(WithdrawCoinsRequest::ID, enc(&w), Frame::seal_to(r, &bank_x, &w).expect("seal"));
        let m = WithdrawCoinsResponse { coins: coins.clone(), balance: Amount::new(90), nonce: nonce(r, BANK_ADDR) };
        push(WithdrawCoinsResponse::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));
        let m =
            WithdrawCoinsRefusal(refusal(r, ReasonCode::INSUFFICIENT_FUNDS, "balance 5 is less than 10", BANK_ADDR));
        push(WithdrawCoinsRefusal::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));

        // deposit_coins
        let sk = SessionKey::generate(r);
        let d = Signed::sign(
            DepositCoins {
                account: AccountId(2002),
                name: Name::new("bob's books").expect("short"),
                request_id: crate::rng::bytes(r),
                coins: coins.clone(),
                session_key: sk.clone(),
                nonce: nonce(r, MERCHANT_ADDR),
            },
            &p.merchant.signing,
        )
        .expect("sign");
        push(DepositCoinsRequest::ID, enc(&d), Frame::seal_to(r, &bank_x, &d).expect("seal"));
        let ack = crate::batch::BatchSigned::sign_batch(
            vec![DepositAck {
                bank_id: BankId::new("bank-a").expect("short"),
                account: AccountId(2002),
                request_id: d.body.request_id,
                amount: Amount::new(10),
                coins_hash: crate::coin::coins_hash(coins.iter().map(|c| &c.0.body.serial)),
                balance: Amount::new(510),
                time: NOW,
            }],
            &p.bank.signing,
        )
        .map(|mut v| v.remove(0))
        .expect("sign");
        let m = DepositCoinsResponse { ack, nonce: nonce(r, BANK_ADDR) };
        push(DepositCoinsResponse::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));
        let m = DepositCoinsRefusal(refusal(
            r,
            ReasonCode::COIN_NOT_IN_CIRCULATION,
            "coin is not in circulation",
            BANK_ADDR,
        ));
        push(DepositCoinsRefusal::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));

        // bank_statement
        let sk = SessionKey::generate(r);
        let s = Signed::sign(
            BankStatement {
                account: AccountId(1001),
                name: Name::new("alice").expect("short"),
                since: Some(NOW - 86_400),
                session_key: sk.clone(),
                nonce: nonce(r, BUYER_ADDR),
            },
            &p.buyer.signing,
        )
        .expect("sign");
        push(BankStatementRequest::ID, enc(&s), Frame::seal_to(r, &bank_x, &s).expect("seal"));
        let m = BankStatementResponse {
            account: AccountId(1001),
            name: Name::new("alice").expect("short"),
            balance: Amount::new(90),
            entries: vec![
                LedgerEntry {
                    id: 1,
                    time: NOW - 60,
                    kind: EntryKind::CounterCredit,
                    amount: Amount::new(100),
                    balance_after: Amount::new(100),
                    memo: BoundedString::new("paid in").expect("short"),
                },
                LedgerEntry {
                    id: 2,
                    time: NOW,
                    kind: EntryKind::Withdrawal,
                    amount: Amount::new(10),
                    balance_after: Amount::new(90),
                    memo: BoundedString::new("").expect("short"),
                },
            ],
            truncated: false,
            nonce: nonce(r, BANK_ADDR),
        };
        push(BankStatementResponse::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));
        let m = BankStatementRefusal(refusal(r, ReasonCode::BAD_SIGNATURE, "signature does not verify", BANK_ADDR));
        push(BankStatementRefusal::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));

        // exchange_coins
        let sk = SessionKey::generate(r);
        let x = ExchangeCoinsRequest {
            request_id: [0x33; 16],
            coins: coins.clone(),
            denominations: Denomination::split(Amount::new(10)).expect("fits"),
            session_key: sk.clone(),
            nonce: nonce(r, BUYER_ADDR),
        };
        push(ExchangeCoinsRequest::ID, enc(&x), Frame::seal_to(r, &bank_x, &x).expect("seal"));
        let m = ExchangeCoinsResponse { coins: coins.clone(), nonce: nonce(r, BANK_ADDR) };
        push(ExchangeCoinsResponse::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));
        let m = ExchangeCoinsRefusal(refusal(
            r,
            ReasonCode::EXCHANGE_DISABLED,
            "this bank does not exchange coins",
            BANK_ADDR,
        ));
        push(ExchangeCoinsRefusal::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));

        // ask_payment
        let ask = Signed::sign(
            AskPayment {
                amount: Amount::new(10),
                merchant: p.merchant.public(),
                description: Description::new("The PayMe paper, PDF").expect("short"),
                accepted_banks: vec![BankId::new("bank-a").expect("short")],
                nonce: nonce(r, MERCHANT_ADDR),
            },
            &p.merchant.signing,
        )
        .expect("sign");
        push(AskPaymentRequest::ID, enc(&ask), Frame::clear(&ask).expect("clear"));
        let sk = SessionKey::generate(r);
        let pay = PayCoinsRequest {
            request_nonce: ask.body.nonce,
            coins: coins.clone(),
            session_key: sk.clone(),
            nonce: nonce(r, BUYER_ADDR),
        };
        let m = AskPaymentResponse(pay.clone());
        push(AskPaymentResponse::ID, enc(&m), Frame::seal_to(r, &merchant_x, &m).expect("seal"));
        let m = AskPaymentRefusal {
            amount: Amount::new(10),
            request_nonce: ask.body.nonce,
            refusal: refusal(r, ReasonCode::REFUSED_BY_USER, "the buyer declined", BUYER_ADDR),
        };
        push(AskPaymentRefusal::ID, enc(&m), Frame::seal_to(r, &merchant_x, &m).expect("seal"));

        // pay_coins
        push(PayCoinsRequest::ID, enc(&pay), Frame::seal_to(r, &merchant_x, &pay).expect("seal"));
        let receipt = Signed::sign(
            Receipt {
                merchant: p.merchant.name.clone(),
                merchant_fingerprint: p.merchant.public().fingerprint(),
                amount: Amount::new(10),
                description_hash: description_hash("The PayMe paper, PDF"),
                coins_hash: crate::coin::coins_hash(coins.iter().map(|c| &c.0.body.serial)),
                request: ask.body.nonce.random,
                time: NOW,
            },
            &p.merchant.signing,
        )
        .expect("sign");
        let m = PayCoinsResponse { receipt, nonce: nonce(r, MERCHANT_ADDR) };
        push(PayCoinsResponse::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));
        let m = PayCoinsRefusal(refusal(
            r,
            ReasonCode::COIN_NOT_IN_CIRCULATION,
            "the bank says a coin was already spent",
            MERCHANT_ADDR,
        ));
        push(PayCoinsRefusal::ID, enc(&m), Frame::seal_session(r, &sk, &m).expect("seal"));
        out
    }

    mod erased {
        pub trait Enc {
            fn enc(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Enc for T {
            #[allow(clippy::expect_used)]
            fn enc(&self) -> Vec<u8> {
                crate::frame::encode_body(self).expect("encodes")
            }
        }
    }
}
