//! PMTP request handlers, one file per message type, and what they share: opening the
//! sealed request, the in-memory nonce check, sealing the reply, and the one place where
//! internal errors become refusal codes.

pub mod bank_statement;
pub mod deposit_coins;
pub mod exchange_coins;
pub mod withdraw_coins;

use crate::store::{IssuedRow, SerialRow, StoreError};
use crate::writer::{cpu, CpuJobFailed, WriteError};
use crate::Bank;
use pmtp_proto::coin::{Coin, CoinBody, Serial};
use pmtp_proto::frame::{Frame, ProtoError};
use pmtp_proto::message::{Kind, Message, MessageType, Request};
use pmtp_proto::refusal::reason_text;
use pmtp_proto::{Amount, Denomination, Nonce, ReasonCode, Refusal, VerifiedCoin};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

/// A refusal decided by a handler: a code and the text the requester will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refuse {
    pub code: ReasonCode,
    pub text: String,
    /// The refusal came from a store error that may go away when the work is run again
    /// (busy, conflict, a unique key taken by another node): the writer retries.
    pub retryable: bool,
}

impl Refuse {
    pub fn new(code: ReasonCode, text: impl Into<String>) -> Self {
        Refuse { code, text: text.into(), retryable: false }
    }
}

impl crate::writer::Retry for Refuse {
    fn retryable(&self) -> bool {
        self.retryable
    }
}

// The one place internal failures become refusal codes.
impl From<StoreError> for Refuse {
    fn from(e: StoreError) -> Self {
        // The kind goes to the log (a corrupt database needs a person; busy does not); the
        // requester learns only that the failure was the bank's, and may retry.
        match &e {
            StoreError::NoAccount(id) => {
                return Refuse::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account {id} at this bank"))
            }
            StoreError::Range("balance would overflow") => {
                return Refuse::new(ReasonCode::INVALID_AMOUNT, "balance would overflow")
            }
            _ => {}
        }
        let retryable = e.retryable();
        match e.kind() {
            Some(kind) if retryable => tracing::info!(error = %e, %kind, "store conflict"),
            Some(kind) => tracing::error!(error = %e, %kind, "store error"),
            None => tracing::error!(error = %e, "store error"),
        }
        Refuse { retryable, ..Refuse::new(ReasonCode::INTERNAL, "the bank's database failed; try again") }
    }
}
impl From<WriteError> for Refuse {
    fn from(e: WriteError) -> Self {
        tracing::error!(error = %e, "write failed");
        Refuse::new(ReasonCode::INTERNAL, "the bank could not commit the request; nothing was done; try again")
    }
}
impl From<CpuJobFailed> for Refuse {
    fn from(_: CpuJobFailed) -> Self {
        Refuse::new(ReasonCode::INTERNAL, "internal error; try again")
    }
}
impl From<pmtp_proto::coin::CoinError> for Refuse {
    fn from(e: pmtp_proto::coin::CoinError) -> Self {
        let code = ReasonCode::from(&e);
        let text = match &e {
            pmtp_proto::coin::CoinError::ForeignBank { .. } => {
                format!("{e}; deposit or exchange it at the bank that minted it")
            }
            _ => e.to_string(),
        };
        Refuse::new(code, text)
    }
}

/// Records a state-changing request's nonce in the transaction that applies it, so a
/// replay is refused even after a restart (the in-memory checker has filtered first).
pub(crate) fn record_nonce(tx: &mut dyn crate::store::Tx, random: &[u8; 16], expiry: u64) -> Result<(), Refuse> {
    if !tx.insert_nonce(random, expiry)? {
        return Err(Refuse::new(ReasonCode::NONCE_REPLAY, "this request was already received"));
    }
    Ok(())
}

/// Answers one frame. `None` means close the connection without a reply (the frame was
/// not a request this bank serves and no refusal identifier fits).
pub async fn dispatch(bank: &Arc<Bank>, frame: Frame, peer: IpAddr) -> Option<Frame> {
    use pmtp_proto::{BankStatementRequest, DepositCoinsRequest, ExchangeCoinsRequest, WithdrawCoinsRequest};
    let id = frame.id;
    match id {
        _ if id == WithdrawCoinsRequest::ID => {
            Some(serve::<WithdrawCoinsRequest, _, _>(bank, frame, peer, withdraw_coins::handle).await)
        }
        _ if id == DepositCoinsRequest::ID => {
            Some(serve::<DepositCoinsRequest, _, _>(bank, frame, peer, deposit_coins::handle).await)
        }
        _ if id == ExchangeCoinsRequest::ID => {
            Some(serve::<ExchangeCoinsRequest, _, _>(bank, frame, peer, exchange_coins::handle).await)
        }
        _ if id == BankStatementRequest::ID => {
            Some(serve::<BankStatementRequest, _, _>(bank, frame, peer, bank_statement::handle).await)
        }
        _ if id.kind() == Kind::Request => {
            let refusal = id.message_type().id(Kind::Refusal);
            Frame::plain_refusal(refusal, ReasonCode::UNEXPECTED_MESSAGE, &format!("a bank does not serve {id}")).ok()
        }
        _ => Frame::plain_refusal(
            MessageType::WithdrawCoins.id(Kind::Refusal),
            ReasonCode::UNEXPECTED_MESSAGE,
            &format!("{id} is not a request"),
        )
        .ok(),
    }
}

/// Opens request `Q`, checks its nonce, runs `work`, and seals what it returns.
async fn serve<Q, F, Fut>(bank: &Arc<Bank>, frame: Frame, peer: IpAddr, work: F) -> Frame
where
    Q: Request + Send + Sync + 'static,
    Q::Response: Send + 'static,
    F: FnOnce(Arc<Bank>, Arc<Q>, IpAddr, u64) -> Fut,
    Fut: std::future::Future<Output = Result<Q::Response, Refuse>>,
{
    let refusal_id = Q::Refusal::ID;
    let b = bank.clone();
    let opened = cpu(move || frame.open_sealed::<Q>(&b.identity.x25519)).await;
    let req = match opened {
        Ok(Ok(q)) => Arc::new(q),
        Ok(Err(e)) => return plain(refusal_id, &e),
        Err(_) => return internal(refusal_id, "the bank could not open the request; try again"),
    };
    let now = bank.clock.now();
    let checked = match bank.nonces.lock() {
        Ok(mut n) => n.check(req.nonce(), peer, now).map_err(|e| Refuse::new(ReasonCode::from(e), e.to_string())),
        Err(_) => Err(Refuse::new(ReasonCode::INTERNAL, "internal error")),
    };
    let result = match checked {
        Ok(()) => work(bank.clone(), req.clone(), peer, now).await,
        Err(r) => Err(r),
    };
    let reply_nonce = Nonce::new(&mut bank.rng(), bank.local_ip(peer), now);
    let key = req.session_key().clone();
    let b = bank.clone();
    // Sealed here, not on the CPU pool: a reply is encrypted with the request's session
    // key (AES-GCM, microseconds), and a hop to another thread costs more than that.
    let sealed = match result {
        Ok(resp) => Frame::seal_session(&mut b.rng(), &key, &resp),
        Err(r) => {
            tracing::info!(code = %r.code, reason = %r.text, request = %Q::ID, "refused");
            let refusal: Q::Refusal = Refusal { code: r.code, text: reason_text(&r.text), nonce: reply_nonce }.into();
            Frame::seal_session(&mut b.rng(), &key, &refusal)
        }
    };
    match sealed {
        Ok(f) => f,
        // The bank failed to encode or seal its own answer: not the requester's doing.
        Err(e) => {
            tracing::error!(error = %e, request = %Q::ID, "sealing the reply failed");
            internal(refusal_id, "the bank could not seal its answer; try again with the same request id")
        }
    }
}

/// A plain refusal for a failure of this bank's own: `internal`, never a code that blames
/// the request.
fn internal(refusal_id: pmtp_proto::MessageId, text: &str) -> Frame {
    plain_code(refusal_id, ReasonCode::INTERNAL, text)
}

fn plain(refusal_id: pmtp_proto::MessageId, e: &ProtoError) -> Frame {
    let code = ReasonCode::from(e);
    tracing::info!(code = %code, error = %e, "refused unopened request");
    plain_code(refusal_id, code, &e.to_string())
}

fn plain_code(refusal_id: pmtp_proto::MessageId, code: ReasonCode, text: &str) -> Frame {
    // A refusal identifier always takes a Plain envelope, so this cannot fail; if it ever
    // did, an empty refusal body still ends the exchange rather than panicking.
    Frame::plain_refusal(refusal_id, code, text).unwrap_or(Frame { id: refusal_id, body: bytes::Bytes::new() })
}

/// Checks the coins a request hands in: at least one, at most the limit, no serial twice,
/// each minted by this bank with its key and unexpired. Runs on the CPU pool.
pub async fn verify_coins(bank: &Arc<Bank>, coins: Vec<Coin>, now: u64) -> Result<(Vec<VerifiedCoin>, Amount), Refuse> {
    let max = bank.config.limits.max_coins_per_request;
    if coins.is_empty() {
        return Err(Refuse::new(ReasonCode::INVALID_AMOUNT, "no coins in the request"));
    }
    if coins.len() > max {
        return Err(Refuse::new(
            ReasonCode::TOO_MANY_COINS,
            format!("{} coins is more than the {max} allowed", coins.len()),
        ));
    }
    let mut seen = HashSet::with_capacity(coins.len());
    for c in &coins {
        if !seen.insert(c.serial()) {
            return Err(Refuse::new(ReasonCode::DUPLICATE_COIN, format!("coin {} appears twice", c.serial())));
        }
    }
    let b = bank.clone();
    cpu(move || {
        // One after the other: coins of one batch share a root, which the first one's
        // RSA verification puts in the cache for the rest (a hash path each).
        let verified: Result<Vec<_>, _> =
            coins.iter().map(|c| c.verify_among(&b.bank_id, b.coin_keys(), now)).collect();
        let verified = verified?;
        let total = Amount::checked_sum(verified.iter().map(|c| c.value()))
            .map_err(|_| Refuse::new(ReasonCode::INVALID_AMOUNT, "coin total overflows"))?;
        Ok((verified, total))
    })
    .await?
}

/// The serial row a coin stands for: what the bank stored when it minted it.
pub fn row_of(c: &Coin) -> SerialRow {
    row_of_body(c.body())
}

fn row_of_body(b: &CoinBody) -> SerialRow {
    SerialRow { serial: b.serial, value: b.value.value(), expiry: b.expiry, key_id: b.key_id }
}

/// Checks that the rows a spend (or hold) took out of circulation are the coins handed in:
/// value, expiry and key as this bank minted them under each serial. A signed body that
/// says otherwise was not minted so by this bank (a forgery under a key that leaked, which
/// a retired key may have) and is refused; the caller's transaction is then rolled back.
pub fn check_spent(coins: &[crate::store::SerialRow], spent: &[crate::store::SerialRow]) -> Result<(), Refuse> {
    let stored: std::collections::HashMap<_, _> = spent.iter().map(|r| (r.serial, r)).collect();
    for c in coins {
        if stored.get(&c.serial).is_none_or(|r| *r != c) {
            tracing::warn!(serial = %c.serial, "a coin whose signed body differs from the minted row was refused");
            return Err(Refuse::new(
                ReasonCode::COIN_BAD_SIGNATURE,
                format!("coin {} is not the coin this bank minted under that serial", c.serial),
            ));
        }
    }
    Ok(())
}

/// The coin values to mint for `amount`: those asked for (checked), or the fewest coins.
pub fn plan_denominations(bank: &Bank, amount: Amount, asked: &[Denomination]) -> Result<Vec<Denomination>, Refuse> {
    let max_exp = bank.config.max_denomination_exponent;
    let limit = bank.config.limits.max_coins_minted_per_request;
    if asked.len() > limit {
        return Err(Refuse::new(
            ReasonCode::TOO_MANY_COINS,
            format!("{} coins asked for; this bank mints at most {limit} per request", asked.len()),
        ));
    }
    let plan = if asked.is_empty() {
        // Config validation keeps the exponent within range.
        let largest = Denomination::from_exponent(max_exp)
            .ok_or_else(|| Refuse::new(ReasonCode::INTERNAL, "max_denomination_exponent out of range"))?;
        let big = amount.minor_units() / largest.value().minor_units();
        if big > limit as u64 {
            return Err(Refuse::new(
                ReasonCode::TOO_MANY_COINS,
                format!("the amount needs more than the {limit} coins this bank mints per request; split it"),
            ));
        }
        let rest = Amount::new(amount.minor_units() % largest.value().minor_units());
        let mut v = vec![largest; big as usize];
        v.extend(Denomination::split(rest).map_err(|e| Refuse::new(ReasonCode::INVALID_AMOUNT, e.to_string()))?);
        v
    } else {
        if let Some(d) = asked.iter().find(|d| d.exponent() > max_exp) {
            return Err(Refuse::new(
                ReasonCode::INVALID_AMOUNT,
                format!("this bank mints coins up to {}, not {d}", 1u64 << max_exp),
            ));
        }
        let sum = Amount::checked_sum(asked.iter().map(|d| d.value()))
            .map_err(|_| Refuse::new(ReasonCode::INVALID_AMOUNT, "denominations overflow"))?;
        if sum != amount {
            return Err(Refuse::new(ReasonCode::AMOUNT_MISMATCH, format!("denominations sum to {sum}, not {amount}")));
        }
        asked.to_vec()
    };
    if plan.len() > limit {
        return Err(Refuse::new(
            ReasonCode::TOO_MANY_COINS,
            format!("{} coins is more than the {limit} allowed", plan.len()),
        ));
    }
    Ok(plan)
}

/// Steps 2 and 3 of a withdrawal or exchange reserved in step 1: signs the coins of the
/// reserved plan (outside any transaction) and puts them in circulation under the request
/// id. A request already finished (by an earlier try, here or at another node) returns
/// the coins stored then; if two finish one request at once, the database lets one win
/// and the other returns the winner's coins.
pub(crate) async fn finish_issue(bank: &Arc<Bank>, row: IssuedRow) -> Result<Vec<Coin>, Refuse> {
    if let Some(blob) = row.coins {
        return coins_of(bank, row.request_id, blob).await;
    }
    let plan: Vec<Denomination> = bincode::deserialize(&row.plan)
        .map_err(|_| Refuse::new(ReasonCode::INTERNAL, "the stored request is damaged"))?;
    let fresh = mint(bank, plan, row.time).await?;
    let rows: Vec<SerialRow> = fresh.iter().map(row_of).collect();
    let blob = bincode::serialize(&fresh).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?;
    let request_id = row.request_id;
    let earlier = bank
        .writer
        .run(move |tx| {
            if tx.complete_issue(&request_id, &rows, &blob)? {
                return Ok(None);
            }
            match tx.issued(&request_id)? {
                Some(IssuedRow { coins: Some(c), .. }) => Ok(Some(c)),
                _ => Err(Refuse::new(ReasonCode::INTERNAL, "the bank lost track of this request; try again")),
            }
        })
        .await??;
    match earlier {
        None => Ok(fresh),
        Some(blob) => coins_of(bank, request_id, blob).await,
    }
}

/// The coins stored for a finished request. Bodies stored unsigned
/// ([`crate::store::UNSIGNED_COINS`]) are signed again on the CPU pool: the same bytes as
/// the first time, since the Merkle root and the PKCS#1 v1.5 signature are deterministic.
pub(crate) async fn coins_of(bank: &Arc<Bank>, request_id: [u8; 16], blob: Vec<u8>) -> Result<Vec<Coin>, Refuse> {
    if !blob.starts_with(crate::store::UNSIGNED_COINS) {
        return stored_coins(&blob, &bank.identity.signing);
    }
    let b = bank.clone();
    let (stored, coins) = cpu(move || {
        let coins = stored_coins(&blob, &b.identity.signing);
        (blob, coins)
    })
    .await?;
    let coins = coins?;
    // Signed again for a retry: written back too, so the next retry only reads.
    remember_signed(bank, request_id, stored, &coins);
    Ok(coins)
}

/// [`coins_of`], with `key` for bodies stored unsigned; they must name it. Key rotation
/// uses it to sign every such row with the old key before the key goes.
pub(crate) fn stored_coins(blob: &[u8], key: &pmtp_proto::keys::SigningKey) -> Result<Vec<Coin>, Refuse> {
    let damaged = || Refuse::new(ReasonCode::INTERNAL, "stored coins are damaged");
    let Some(bodies) = blob.strip_prefix(crate::store::UNSIGNED_COINS) else {
        return bincode::deserialize(blob).map_err(|_| damaged());
    };
    let bodies: Vec<CoinBody> = bincode::deserialize(bodies).map_err(|_| damaged())?;
    sign_bodies(bodies, key)
}

/// One RSA signature over the Merkle root of `bodies` (coin format 2), which must name
/// `key`: a body under another key (a node that missed a key rotation) is refused rather
/// than signed with a key its id does not match.
fn sign_bodies(bodies: Vec<CoinBody>, key: &pmtp_proto::keys::SigningKey) -> Result<Vec<Coin>, Refuse> {
    let id = key.verifying_key().key_id();
    if let Some(other) = bodies.iter().find(|b| b.key_id != id) {
        return Err(Refuse::new(
            ReasonCode::INTERNAL,
            format!(
                "these coins were made under key {}, which this bank no longer signs with; ask the bank's operator",
                other.key_id
            ),
        ));
    }
    Coin::mint_batch(bodies, key).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))
}

/// How old a reserved request must be before the background round finishes it (its own
/// handler normally finishes it within milliseconds).
pub const RESUME_AFTER_SECS: u64 = 30;

/// Finishes withdrawals and exchanges that were paid for but not issued because their
/// node stopped between the steps (reserved at least `min_age` seconds ago, so requests
/// in progress are left to their own handler). Returns how many were finished.
pub async fn resume_issues(bank: &Arc<Bank>, now: u64, min_age: u64) -> Result<usize, Refuse> {
    let stale = bank.readers.read(|tx| tx.reserved_issues(100)).await?;
    let mut done = 0;
    for row in stale.into_iter().filter(|r| r.time.saturating_add(min_age) <= now) {
        let id = hex::encode(row.request_id);
        finish_issue(bank, row).await?;
        tracing::info!(request = %id, "finished an interrupted withdrawal or exchange");
        done += 1;
    }
    Ok(done)
}

/// Signs new coins for `plan`: one RSA signature over the Merkle root of their bodies
/// (coin format 2), on the CPU pool. Their serials are not yet in circulation: the caller
/// issues them, or throws the coins away. Signing is the costly step of a request, so it
/// starts only for a request found new and payable ([`Fresh::start`]), or one already paid
/// for ([`finish_issue`]).
pub async fn mint(bank: &Arc<Bank>, plan: Vec<Denomination>, now: u64) -> Result<Vec<Coin>, Refuse> {
    let bodies = bodies(bank, &plan, now);
    let b = bank.clone();
    cpu(move || sign_bodies(bodies, &b.identity.signing)).await?
}

/// New coin bodies for `plan`: random serials, expiring a coin lifetime after `now`,
/// under the bank's signing key.
fn bodies(bank: &Bank, plan: &[Denomination], now: u64) -> Vec<CoinBody> {
    let mut rng = bank.rng();
    let key_id = bank.identity.signing.verifying_key().key_id();
    let expiry = now.saturating_add(bank.config.coin_lifetime_secs);
    plan.iter()
        .map(|d| CoinBody {
            value: *d,
            serial: Serial::random(&mut rng),
            bank_id: bank.bank_id.clone(),
            bank_addr: bank.public_addr.clone(),
            expiry,
            key_id,
        })
        .collect()
}

type Signing = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Coin>, Refuse>> + Send>>;

/// Coins of a request that a read found payable and new, put in circulation by the one
/// transaction that takes the payment for them (a withdrawal's debit, an exchange's spent
/// coins): one commit per request. Their signature is made on the CPU pool while that
/// transaction commits, so the request waits for the longer of the two, not their sum;
/// the transaction stores the bodies ([`crate::store::UNSIGNED_COINS`]), which a retry
/// signs again. Coins the transaction does not issue are thrown away unseen.
pub(crate) struct Fresh {
    signing: Signing,
    pub issue: Issue,
}

/// What puts [`Fresh`] coins in circulation, inside the writer's transaction.
#[derive(Clone)]
pub(crate) struct Issue {
    rows: Vec<SerialRow>,
    blob: Vec<u8>,
}

impl Fresh {
    /// Makes the bodies and starts their signature.
    pub fn start(bank: &Arc<Bank>, plan: &[Denomination], now: u64) -> Result<Fresh, Refuse> {
        let bodies = bodies(bank, plan, now);
        let rows = bodies.iter().map(row_of_body).collect();
        let encoded = bincode::serialize(&bodies).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?;
        let blob = [&crate::store::UNSIGNED_COINS[..], &encoded].concat();
        let b = bank.clone();
        let job = crate::writer::cpu_start(move || sign_bodies(bodies, &b.identity.signing));
        let signing: Signing = Box::pin(async move { job.await? });
        Ok(Fresh { signing, issue: Issue { rows, blob } })
    }
}
impl Issue {
    /// Issues the coins under `request_id`, reserved in this same transaction.
    pub fn run(&self, tx: &mut dyn crate::store::Tx, request_id: &[u8; 16]) -> Result<(), Refuse> {
        if tx.complete_issue(request_id, &self.rows, &self.blob)? {
            Ok(())
        } else {
            Err(Refuse::new(ReasonCode::INTERNAL, "the bank lost track of this request; try again"))
        }
    }
}

/// The coins of a withdrawal or exchange whose transaction ran: the fresh ones it issued,
/// or (a retry, or a request not signed for beforehand) those of `row`, finished now.
pub(crate) async fn issued_coins(
    bank: &Arc<Bank>,
    row: IssuedRow,
    issued: bool,
    fresh: Option<Fresh>,
) -> Result<Vec<Coin>, Refuse> {
    match fresh {
        Some(f) if issued => {
            let coins = f.signing.await?;
            remember_signed(bank, row.request_id, f.issue.blob, &coins);
            Ok(coins)
        }
        _ => finish_issue(bank, row).await,
    }
}

/// A request's coins signed after its transaction stored their bodies, to be written back.
pub struct SignedBack {
    request_id: [u8; 16],
    unsigned: Vec<u8>,
    signed: Vec<u8>,
}

/// At most this many signed requests wait to be written back; past it, a request's bodies
/// stay unsigned (a retry signs them again, key rotation signs them first).
pub const MAX_SIGNED_BACK: usize = 65_536;

fn remember_signed(bank: &Bank, request_id: [u8; 16], unsigned: Vec<u8>, coins: &[Coin]) {
    let Ok(signed) = bincode::serialize(coins) else { return };
    if let Ok(mut waiting) = bank.signed_back.lock() {
        if waiting.len() < MAX_SIGNED_BACK {
            waiting.push(SignedBack { request_id, unsigned, signed });
        }
    }
}

/// Writes the coins signed since their request committed ([`Fresh`]) over their stored
/// bodies, a few hundred to a transaction, so that a retry of an older request reads its
/// coins instead of signing them again, and a key rotation has few left to sign. Run by
/// the background round every second and once more at a clean stop; what a crash loses
/// stays unsigned, which is safe. Returns how many rows it signed.
pub async fn write_back_signed(bank: &Arc<Bank>) -> Result<usize, Refuse> {
    let waiting = match bank.signed_back.lock() {
        Ok(mut w) => std::mem::take(&mut *w),
        Err(_) => return Ok(0),
    };
    let (mut written, mut failed) = (0, None);
    let mut rest = waiting.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<SignedBack> = rest.by_ref().take(256).collect();
        let done = bank
            .writer
            .run(move |tx| {
                let mut n = 0;
                for s in &chunk {
                    n += usize::from(tx.sign_issue(&s.request_id, &s.unsigned, &s.signed)?);
                }
                Ok::<_, Refuse>(n)
            })
            .await;
        // A chunk that failed stays unsigned (safe); the others are still written.
        match done {
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.into()),
        }
    }
    match failed {
        Some(e) if written == 0 => Err(e),
        _ => Ok(written),
    }
}
