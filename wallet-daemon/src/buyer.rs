//! The buyer's side of a purchase: a merchant's wallet sends ask_payment_request.
//!
//! Check the merchant's signature and nonce; compare its keys with the pinned ones (a
//! changed key is refused, like SSH's known_hosts); ask the person, unless their policy
//! pays this merchant and amount at once (one source address may hold only its share of
//! the requests waiting for the person, `limits.max_pending_per_source`); choose coins
//! that make the exact amount (exchanging a larger coin first when the denominations do
//! not fit); record the payment and mark its coins pending (committed) before they leave;
//! send pay_coins_request sealed to the merchant; store the receipt. Without a receipt,
//! the coins are resolved by exchange at their bank.

use crate::ops;
use crate::store::{self, CoinState, Direction, OpKind, PaymentState};
use crate::{PendingRequest, Wallet, WalletError};
use futures::{SinkExt, StreamExt};
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::denomination::{select_exact, SelectError};
use pmtp_proto::keys::PeerKeys;
use pmtp_proto::refusal::reason_text;
use pmtp_proto::text::BankId;
use pmtp_proto::*;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, PmtpCodec>;

/// Handles one ask_payment_request frame and the rest of its exchange on `conn`.
pub async fn on_ask_payment(w: Arc<Wallet>, frame: Frame, peer: IpAddr, conn: &mut Conn) {
    let ask: AskPaymentRequest = match frame.open_clear() {
        Ok(a) => a,
        Err(e) => return plain(conn, ReasonCode::from(&e), &e.to_string()).await,
    };
    let merchant = match ask.body.merchant.parse() {
        Ok(k) => k,
        Err(e) => return plain(conn, ReasonCode::BAD_SIGNATURE, &format!("merchant key: {e}")).await,
    };
    if ask.verify(&merchant.verifying).is_err() {
        return plain(conn, ReasonCode::BAD_SIGNATURE, "the request is not signed by the key it carries").await;
    }
    let checked = w.nonces.lock().map(|mut n| n.check(&ask.body.nonce, peer, w.now())).map_err(|_| ());
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return plain(conn, ReasonCode::from(e), &e.to_string()).await,
        Err(_) => return plain(conn, ReasonCode::INTERNAL, "internal error").await,
    }
    let outcome = decide_and_pay(&w, &ask, &merchant, peer, conn).await;
    if let Err(e) = outcome {
        tracing::info!(merchant = %merchant.name.escaped(), code = %e.code, reason = %e.text, "payment request refused");
        let refusal = AskPaymentRefusal {
            amount: ask.body.amount,
            request_nonce: ask.body.nonce,
            refusal: Refusal {
                code: e.code,
                text: reason_text(&e.text),
                nonce: Nonce::new(&mut w.rng(), crate::conn_local_ip(conn.get_ref(), &w), w.now()),
            },
        };
        if let Ok(f) = Frame::seal_to(&mut w.rng(), &merchant.x25519, &refusal) {
            let _ = conn.send(f).await;
        }
    }
}

async fn plain(conn: &mut Conn, code: ReasonCode, text: &str) {
    tracing::info!(%code, reason = %pmtp_proto::text::escape_control(text), "unreadable payment request refused");
    if let Ok(f) = Frame::plain_refusal(AskPaymentRefusal::ID, code, text) {
        let _ = conn.send(f).await;
    }
}

/// Pinning: `Ok(true)` for a merchant already known with these keys, `Ok(false)` for a new
/// merchant, and an error for a known name with different keys.
async fn known_merchant(w: &Arc<Wallet>, merchant: &PeerKeys) -> Result<bool, WalletError> {
    known_as(w, merchant.name.as_str(), merchant).await
}

/// [`known_merchant`] with the keys pinned under `key` (a merchant's name, or a shop's web
/// origin for payments in band).
pub(crate) async fn known_as(w: &Arc<Wallet>, key: &str, merchant: &PeerKeys) -> Result<bool, WalletError> {
    let name = key.to_owned();
    let pinned = w.db.call(move |c, _| store::pinned_fingerprint(c, &name)).await?;
    match pinned {
        Some(fp) if fp == merchant.fingerprint.to_string() => Ok(true),
        Some(fp) => {
            let who = pmtp_proto::text::escape_control(key);
            tracing::warn!(
                merchant = %who, pinned = %fp, presented = %merchant.fingerprint,
                "MERCHANT KEY CHANGED: refusing; if the merchant really changed keys, run `payme-wallet merchants forget`"
            );
            Err(WalletError::new(
                ReasonCode::MERCHANT_KEY_CHANGED,
                format!("merchant {who} presented a key different from the one pinned; refused"),
            ))
        }
        None => Ok(false),
    }
}

async fn decide_and_pay(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    peer: IpAddr,
    conn: &mut Conn,
) -> Result<(), WalletError> {
    let amount = ask.body.amount;
    crate::checked_amount(amount.minor_units())?;
    let known = known_merchant(w, merchant).await?;
    let policy = &w.config.policy;
    if !known && policy.unknown_merchants == crate::config::UnknownMerchants::Refuse {
        return Err(WalletError::new(ReasonCode::UNKNOWN_MERCHANT, "this wallet pays only merchants it already knows"));
    }
    // Refused at once when the wallet cannot pay, before the person is asked to approve.
    let auto = known && policy.auto_approve_limit > 0 && amount.minor_units() <= policy.auto_approve_limit;
    if !auto {
        // Nobody is asked to approve what the wallet cannot pay. (Paid by policy, the
        // coin choice in `pay` finds the same shortfall.)
        can_pay(w, ask).await?;
        ask_person(w, ask, merchant, known, peer).await?;
    }
    if !known {
        pin(w, merchant).await?;
    }
    pay(w, ask, merchant, peer, conn).await
}

/// Whether this wallet holds enough available coins of one bank the merchant accepts to
/// pay the amount (possibly after exchanging a larger coin, which [`reserve`] does).
/// Coins chosen meanwhile by another payment can still make the payment fail later as
/// `not_enough_money`; this check only spares the person a question that cannot succeed.
async fn can_pay(w: &Arc<Wallet>, ask: &AskPaymentRequest) -> Result<(), WalletError> {
    funds_for(w, ask.body.amount, &ask.body.accepted_banks).await
}

/// [`can_pay`] for any request: `amount` in coins of one of the `accepted` banks (any
/// known bank when empty).
pub(crate) async fn funds_for(w: &Arc<Wallet>, amount: Amount, accepted: &[BankId]) -> Result<(), WalletError> {
    let accepted: Vec<String> = accepted.iter().map(|b| b.as_str().to_owned()).collect();
    for bank in w.banks.keys().filter(|b| accepted.is_empty() || accepted.contains(b)) {
        let b = bank.clone();
        let counts = w.db.call(move |c, _| store::counts_for(c, CoinState::Available, &b, amount)).await?;
        let held = counts
            .iter()
            .try_fold(Amount::ZERO, |sum, (d, n)| d.value().checked_mul(*n as u64).and_then(|v| sum.checked_add(v)));
        if held.is_ok_and(|h| h >= amount) {
            return Ok(());
        }
    }
    Err(WalletError::new(
        ReasonCode::NOT_ENOUGH_MONEY,
        format!("not enough money in coins the merchant accepts to pay {amount}"),
    ))
}

/// Shows the request as pending and waits for `approve` or `refuse`, or the deadline.
async fn ask_person(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    known: bool,
    peer: IpAddr,
) -> Result<(), WalletError> {
    let question = Question {
        merchant: merchant.name.escaped(),
        fingerprint: merchant.fingerprint.to_string(),
        new_merchant: !known,
        description: ask.body.description.escaped(),
        amount: ask.body.amount,
        peer,
        origin: None,
        order: store::short_order_id(&ask.body.nonce.random),
    };
    wait_for_consent(w, question).await
}

/// What the person is asked to approve (every text escaped already).
pub(crate) struct Question {
    pub merchant: String,
    pub fingerprint: String,
    pub new_merchant: bool,
    pub description: String,
    pub amount: Amount,
    /// Whose request counts against a source's share of the list.
    pub peer: IpAddr,
    /// The shop's web origin, for a payment in band.
    pub origin: Option<String>,
    pub order: String,
}

/// Puts `q` on the pending list and waits for `approve` or `refuse`, or the deadline.
pub(crate) async fn wait_for_consent(w: &Arc<Wallet>, q: Question) -> Result<(), WalletError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = w.next_pending.fetch_add(1, Ordering::Relaxed);
    let peer = q.peer;
    {
        let mut pending = w.pending.lock().map_err(|_| WalletError::new(ReasonCode::INTERNAL, "internal error"))?;
        if pending.len() >= w.config.limits.max_pending_requests {
            return Err(WalletError::new(ReasonCode::BUSY, "too many payment requests are waiting; try again later"));
        }
        // One source's share of the list, so a flood from one address (or one IPv6 /64)
        // cannot keep every other shop out.
        let source = crate::source_of(peer);
        let share = w.config.limits.pending_per_source();
        if pending.values().filter(|r| crate::source_of(r.peer) == source).count() >= share {
            tracing::info!(%peer, share, "payment request refused: its address already has its share waiting");
            return Err(WalletError::new(
                ReasonCode::BUSY,
                format!("{share} payment requests from your address are already waiting; try again later"),
            ));
        }
        tracing::info!(
            id, order = %q.order, merchant = %q.merchant, amount = %q.amount, description = %q.description,
            origin = q.origin.as_deref().unwrap_or(""),
            "payment request waiting for approval (payme-wallet pending / approve / refuse)"
        );
        // Texts escaped of control characters already (Question's contract).
        crate::notify::request_waiting(
            &q.merchant,
            &q.amount.in_units(w.config.ui.currency_digits, &w.config.ui.currency),
            &q.description,
            q.origin.as_deref().unwrap_or(&peer.to_string()),
        );
        pending.insert(
            id,
            PendingRequest {
                id,
                merchant: q.merchant,
                fingerprint: q.fingerprint,
                new_merchant: q.new_merchant,
                description: q.description,
                amount: q.amount.minor_units(),
                peer,
                origin: q.origin,
                order: q.order,
                created: w.now(),
                answer: tx,
            },
        );
    }
    let wait = Duration::from_secs(w.config.policy.consent_timeout_secs.max(1));
    let answer = tokio::time::timeout(wait, rx).await;
    if let Ok(mut p) = w.pending.lock() {
        p.remove(&id);
    }
    match answer {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(WalletError::new(ReasonCode::REFUSED_BY_USER, "the buyer declined")),
        // NO_ANSWER on the wire (the merchant's wallet words it as a timeout).
        _ => Err(WalletError::new(ReasonCode::NO_ANSWER, "the buyer did not approve or refuse in time")),
    }
}

async fn pin(w: &Arc<Wallet>, merchant: &PeerKeys) -> Result<(), WalletError> {
    pin_as(w, merchant.name.as_str(), merchant).await
}

/// Pins `merchant`'s keys under `key` (its name, or a shop's web origin).
pub(crate) async fn pin_as(w: &Arc<Wallet>, key: &str, merchant: &PeerKeys) -> Result<(), WalletError> {
    let (name, fp) = (key.to_owned(), merchant.fingerprint.to_string());
    let identity =
        bincode::serialize(&merchant.public).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    w.db.call(move |c, _| store::pin_merchant(c, &name, &fp, &identity)).await?;
    Ok(())
}

/// Chooses coins for `amount` from one acceptable bank, exchanging a larger coin first if
/// needed, and marks them pending under a new payment record. Returns (payment id, coins,
/// the claim on the payment).
async fn reserve(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    peer: IpAddr,
) -> Result<(i64, Vec<Coin>, Option<crate::Claim>), WalletError> {
    let record = store::NewPayment {
        direction: Direction::Out,
        peer: peer.to_string(),
        merchant: merchant.name.as_str().to_owned(),
        merchant_fp: merchant.fingerprint.to_string(),
        amount: ask.body.amount,
        description: ask.body.description.as_str().to_owned(),
        request: bincode::serialize(&ask.body.nonce)
            .map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?,
        http: None,
    };
    reserve_for(w, &ask.body.accepted_banks, record).await
}

/// [`reserve`] for any outgoing payment: `record` is written with the coins chosen for
/// its amount, in coins of one of the `accepted` banks (any known bank when empty).
pub(crate) async fn reserve_for(
    w: &Arc<Wallet>,
    accepted: &[BankId],
    record: store::NewPayment,
) -> Result<(i64, Vec<Coin>, Option<crate::Claim>), WalletError> {
    let amount = record.amount;
    let accepted: Vec<String> = accepted.iter().map(|b| b.as_str().to_owned()).collect();
    let banks: Vec<String> = w.banks.keys().filter(|b| accepted.is_empty() || accepted.contains(b)).cloned().collect();
    // Bounded: each bank at most eight choices, and two exchanges. A choice that meets a
    // damaged coin quarantines it and chooses again among the others.
    for bank in banks {
        let mut exchanges = 0;
        for _attempt in 0..8 {
            let locked = w.coin_lock.lock().await;
            let b = bank.clone();
            let counts = w.db.call(move |c, _| store::counts_for(c, CoinState::Available, &b, amount)).await?;
            // One entry per coin, largest first: coins of one value are alike to choose.
            let denoms: Vec<Denomination> = counts.iter().flat_map(|(d, n)| std::iter::repeat_n(*d, *n)).collect();
            match select_exact(&denoms, amount) {
                Ok(idx) => {
                    let mut per_value: Vec<(Denomination, usize)> = Vec::new();
                    for &i in &idx {
                        match per_value.iter_mut().find(|(d, _)| *d == denoms[i]) {
                            Some((_, n)) => *n += 1,
                            None => per_value.push((denoms[i], 1)),
                        }
                    }
                    let record = record.clone();
                    let claims = w.in_flight.clone();
                    let (b, chosen) = (bank.clone(), idx.len());
                    let reserved =
                        w.db.call(move |c, vault| {
                            let tx = c.transaction()?;
                            let mut serials = Vec::new();
                            for (d, n) in &per_value {
                                serials.extend(store::serials_of_value(&tx, CoinState::Available, &b, *d, *n)?);
                            }
                            if serials.len() != chosen {
                                // Counted but not found (the coin lock makes this damage):
                                // choose again.
                                tracing::warn!(bank = %b, "coins counted for a payment were not found; choosing again");
                                return Ok(None);
                            }
                            // Opening the chosen coins quarantines any damaged one.
                            let coins = store::coins_by_serial(&tx, vault, &serials)?;
                            if coins.len() != serials.len() {
                                tx.commit()?;
                                return Ok(None);
                            }
                            let id = store::insert_payment(&tx, &record)?;
                            store::move_coins(&tx, &serials, CoinState::Pending, Some(id), None)?;
                            // Claimed before it is visible, so maintenance never resolves a
                            // payment that is being sent.
                            let claim = claims.claim(id);
                            tx.commit()?;
                            Ok(Some((id, coins, claim)))
                        })
                        .await?;
                    drop(locked);
                    match reserved {
                        Some(r) => return Ok(r),
                        None => {
                            tracing::warn!(bank = %bank, "a chosen coin could not be taken; choosing again");
                            continue;
                        }
                    }
                }
                Err(SelectError::NeedsExchange { missing, break_index, .. }) => {
                    let value = denoms[break_index];
                    let b = bank.clone();
                    let Some(serial) =
                        w.db.call(move |c, _| store::serials_of_value(c, CoinState::Available, &b, value, 1))
                            .await?
                            .pop()
                    else {
                        continue;
                    };
                    if exchanges == 2 {
                        break;
                    }
                    exchanges += 1;
                    // Break the coin into what is missing plus change for ourselves.
                    let want = change_for(value, &missing)?;
                    tracing::info!(bank = %bank, coin = %value, "exchanging a coin to pay the exact amount");
                    // The coin is marked pending under the exchange before the lock goes.
                    let (op, _claim) =
                        ops::begin_op(w, OpKind::Exchange, &bank, vec![serial], ops::Taking::Available(&locked), None)
                            .await?;
                    drop(locked);
                    ops::run_op_then(w, &op, want, None).await?;
                }
                Err(SelectError::Insufficient { .. }) => break,
            }
        }
    }
    Err(WalletError::new(
        ReasonCode::NOT_ENOUGH_MONEY,
        format!("not enough money in coins the merchant accepts to pay {amount}"),
    ))
}

/// The denominations to ask for when exchanging `coin` to pay `missing`: `missing`, plus
/// the rest of the coin's value as change. `missing` adds up to less than the coin (coin
/// choice said so); anything else is an internal error, never an exchange for nothing.
fn change_for(coin: Denomination, missing: &[Denomination]) -> Result<Vec<Denomination>, WalletError> {
    let internal = |e: &dyn std::fmt::Display| WalletError::new(ReasonCode::INTERNAL, format!("making change: {e}"));
    let missing_total = Amount::checked_sum(missing.iter().map(|d| d.value())).map_err(|e| internal(&e))?;
    let rest = coin.value().checked_sub(missing_total).map_err(|e| internal(&e))?;
    let mut want = missing.to_vec();
    want.extend(Denomination::split(rest).map_err(|e| internal(&e))?);
    Ok(want)
}

async fn pay(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    peer: IpAddr,
    conn: &mut Conn,
) -> Result<(), WalletError> {
    let (payment, coins, claim) = reserve(w, ask, merchant, peer).await?;
    let result = send_coins(w, ask, merchant, payment, coins, conn).await;
    match result {
        Ok(()) => Ok(()),
        Err(Outcome::Refused(reason)) => {
            // The merchant refused; whether its bank spent the coins is the bank's to say.
            tracing::info!(payment, %reason, "merchant refused the payment; resolving its coins");
            set_state(w, payment, PaymentState::RefusedUnresolved, &reason).await;
            let w2 = w.clone();
            // The claim goes with the task: maintenance does not resolve it alongside; the
            // shutdown tracker waits for it.
            w.tasks.spawn(async move {
                let _ = ops::resolve_payment(&w2, payment).await;
                drop(claim);
            });
            Ok(())
        }
        Err(Outcome::Unknown(reason)) => {
            tracing::warn!(payment, %reason, "no receipt; resolving the payment's coins at the bank");
            let w2 = w.clone();
            // The claim goes with the task: maintenance does not resolve it alongside; the
            // shutdown tracker waits for it.
            w.tasks.spawn(async move {
                let _ = ops::resolve_payment(&w2, payment).await;
                drop(claim);
            });
            Ok(())
        }
    }
}

enum Outcome {
    Refused(String),
    Unknown(String),
}

/// Moves payment `payment` to `state`, noting `reason`; a failure is logged (the payment
/// stays as it was, and maintenance resolves it).
pub(crate) async fn set_state(w: &Arc<Wallet>, payment: i64, state: PaymentState, reason: &str) {
    let reason = reason.to_owned();
    let stored =
        w.db.call(move |c, _| {
            let tx = c.transaction()?;
            store::set_payment_state(&tx, payment, state, Some(&reason))?;
            tx.commit()?;
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::error!(payment, to = state.as_str(), error = %e, "payment state not stored");
    }
}

async fn send_coins(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    payment: i64,
    coins: Vec<Coin>,
    conn: &mut Conn,
) -> Result<(), Outcome> {
    let session_key = SessionKey::generate(&mut w.rng());
    let hash = pmtp_proto::coin::coins_hash(coins.iter().map(|c| &c.0.body.serial));
    let pay = PayCoinsRequest {
        request_nonce: ask.body.nonce,
        coins,
        session_key: session_key.clone(),
        nonce: Nonce::new(&mut w.rng(), crate::conn_local_ip(conn.get_ref(), w), w.now()),
    };
    let frame = Frame::seal_to(&mut w.rng(), &merchant.x25519, &pay).map_err(|e| Outcome::Unknown(e.to_string()))?;
    conn.send(frame).await.map_err(|e| Outcome::Unknown(format!("sending coins failed: {e}")))?;
    let wait = Duration::from_secs(w.config.merchant.collect_timeout_secs.max(5) + 10);
    let reply = match tokio::time::timeout(wait, conn.next()).await {
        Ok(Some(Ok(f))) => f,
        Ok(_) => return Err(Outcome::Unknown("the merchant closed the connection without a receipt".into())),
        Err(_) => return Err(Outcome::Unknown("the merchant sent no receipt in time".into())),
    };
    match reply.open_reply::<PayCoinsRequest>(&session_key) {
        Ok(Reply::Response(resp)) => {
            let receipt = resp
                .receipt
                .verify(&merchant.verifying)
                .map_err(|_| Outcome::Unknown("receipt not signed by the merchant".into()))?;
            let ok = receipt.amount == ask.body.amount
                && receipt.coins_hash == hash
                && receipt.request == ask.body.nonce.random
                && receipt.description_hash == description_hash(ask.body.description.as_str());
            if !ok {
                return Err(Outcome::Unknown("the receipt does not match the payment".into()));
            }
            let blob = bincode::serialize(&resp.receipt)
                .map_err(|e| Outcome::Unknown(format!("the receipt cannot be stored: {e}")))?;
            let stored =
                w.db.call(move |c, vault| {
                    let tx = c.transaction()?;
                    let serials: Vec<Serial> =
                        store::coins_of_payment(&tx, vault, payment)?.iter().map(|r| r.coin.serial()).collect();
                    store::move_coins(&tx, &serials, CoinState::Spent, None, None)?;
                    store::mark_payment_done(&tx, payment, &blob)?;
                    tx.commit()?;
                    Ok(())
                })
                .await;
            if let Err(e) = stored {
                tracing::error!(payment, error = %e, "receipt received but not stored");
            }
            tracing::info!(payment, merchant = %merchant.name.escaped(), amount = %ask.body.amount, "paid; receipt stored");
            Ok(())
        }
        // The merchant's text is stored, shown and logged: escaped.
        Ok(Reply::Refused(r)) => Err(Outcome::Refused(format!("{} ({})", r.text.escaped(), r.code))),
        Ok(Reply::PlainRefused(p)) => Err(Outcome::Refused(format!("{} ({})", p.text.escaped(), p.code))),
        Err(e) => Err(Outcome::Unknown(format!("unreadable answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmtp_proto::keys::Signed;
    use pmtp_proto::testing::{samples, TestRng};
    use pmtp_proto::text::Description;
    use std::collections::HashSet;

    /// A wallet with one bank (never contacted here) holding available coins of `values`.
    fn wallet_with_coins(dir: &std::path::Path, values: &[u64]) -> Arc<Wallet> {
        let parties = samples::parties();
        let bank = parties.bank.public();
        let mut config = crate::config::Config::default();
        config.banks.push(crate::config::BankConfig {
            id: bank.name.as_str().to_owned(),
            addr: "127.0.0.1:9".into(),
            public_key: bank.to_text(),
            account: None,
            account_name: None,
            retired_public_keys: Vec::new(),
        });
        let db = store::Db::open(&dir.join("wallet.db"), store::Vault::new(&parties.buyer)).unwrap();
        let mut rng = TestRng(5);
        let coins: Vec<Coin> =
            values.iter().map(|&v| samples::coin(&parties.bank, &mut rng, v, store::now() + 3600)).collect();
        db.with(|c| {
            let tx = c.transaction()?;
            store::insert_coins(&tx, &db.vault, &coins, CoinState::Available, None)?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        Arc::new(Wallet::new(config, crate::DataDir::new(dir.to_owned(), "wallet"), parties.buyer, db).unwrap())
    }

    fn ask(amount: u64) -> (AskPaymentRequest, PeerKeys) {
        let merchant = samples::parties().merchant;
        let ask = Signed::sign(
            AskPayment {
                amount: Amount::new(amount),
                merchant: merchant.public(),
                description: Description::new("a book").unwrap(),
                accepted_banks: vec![],
                nonce: Nonce::new(&mut rng::os(), [127, 0, 0, 1].into(), store::now()),
            },
            &merchant.signing,
        )
        .unwrap();
        let keys = ask.body.merchant.parse().unwrap();
        (ask, keys)
    }

    fn available(w: &Wallet) -> usize {
        w.db.with(|c| store::coins_in(c, &w.db.vault, CoinState::Available, None)).unwrap().len()
    }

    async fn reserve_one(w: Arc<Wallet>, amount: u64) -> Result<(i64, Vec<Coin>), WalletError> {
        let (ask, keys) = ask(amount);
        reserve(&w, &ask, &keys, [127, 0, 0, 1].into()).await.map(|(id, coins, _claim)| (id, coins))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_payments_never_choose_the_same_coin() {
        let dir = tempfile::tempdir().unwrap();
        let w = wallet_with_coins(dir.path(), &[8; 8]);
        let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(reserve_one(w.clone(), 8))).collect();
        let mut chosen = HashSet::new();
        for t in tasks {
            let (_, coins) = t.await.unwrap().expect("every payment finds a coin of its own");
            for c in coins {
                assert!(chosen.insert(c.serial()), "coin {} chosen twice", c.serial());
            }
        }
        assert_eq!(chosen.len(), 8);
        assert_eq!(available(&w), 0);
        let ninth = reserve_one(w.clone(), 8).await.map(|_| ()).unwrap_err();
        assert_eq!(ninth.code, ReasonCode::NOT_ENOUGH_MONEY);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_payment_chooses_no_coin_while_the_coin_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let w = wallet_with_coins(dir.path(), &[8, 8]);
        let locked = w.coin_lock.lock().await;
        let task = tokio::spawn(reserve_one(w.clone(), 8));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished());
        assert_eq!(available(&w), 2, "nothing chosen or marked while another holds the lock");
        drop(locked);
        let (_, coins) = task.await.unwrap().unwrap();
        assert_eq!(coins.len(), 1);
        assert_eq!(available(&w), 1, "the chosen coin is pending once the lock is let go");
    }
}
