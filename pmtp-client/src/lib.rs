//! A PMTP client for banks: withdraw, deposit, exchange and statement over TCP.
//!
//! Used by wallets, by peer banks (clearing) and by tests. One request per call on a fresh
//! connection; the request's nonce names this side's address on that connection. Replies
//! are checked: coins must be minted by the bank, signed, unexpired and add up; deposit
//! acknowledgements must carry the bank's signature and name the coins deposited.
//!
//! A request id is the caller's: calling again with the same id after a timeout or a
//! closed connection asks the bank for the original answer instead of a second effect
//! ([`ClientError::is_definitive`] tells a refusal worth retrying from one that is not).
//! Time comes from a [`clock::Clock`], so tests can move it instead of sleeping.
//!
//! May touch: the network (one TCP connection per call). Never a database or a file.

#![forbid(unsafe_code)]

pub mod clock;
pub mod entropy;

use clock::{Clock, SystemClock};
use entropy::{Entropy, OsEntropy};

use futures::{SinkExt, StreamExt};
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::coin::{coins_hash, CoinError};
use pmtp_proto::keys::{Identity, PeerKeys, Signed};
use pmtp_proto::message::Request;
use pmtp_proto::refusal::PlainRefusal;
use pmtp_proto::text::{BankId, Name, Password};
use pmtp_proto::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the bank at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to the bank failed: {0}")]
    Io(String),
    #[error("the bank did not answer in time; the outcome is unknown")]
    Timeout,
    // The bank's text is a peer's: escaped wherever this is shown or logged.
    #[error("the bank refused: {} ({})", .0.text.escaped(), .0.code)]
    Refused(Refusal),
    #[error("the bank could not read the request: {} ({})", .0.text.escaped(), .0.code)]
    PlainRefused(PlainRefusal),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("the bank closed the connection without answering; the outcome is unknown")]
    Closed,
    #[error("the bank's answer is invalid: {0}")]
    BadAnswer(String),
}

impl ClientError {
    /// True when the bank judged and rejected the request (authenticated refusal with a
    /// definitive code): retrying it unchanged will fail the same way.
    pub fn is_definitive(&self) -> bool {
        matches!(self, ClientError::Refused(r) if r.code.is_definitive())
    }
    /// True when the request may have reached the bank and taken effect, but no answer
    /// came (timeout, closed connection, I/O failure): only a retry with the same request
    /// id tells what happened.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Timeout | ClientError::Closed | ClientError::Io(_))
    }
    pub fn code(&self) -> Option<ReasonCode> {
        match self {
            ClientError::Refused(r) => Some(r.code),
            ClientError::PlainRefused(p) => Some(p.code),
            _ => None,
        }
    }
}

/// Where a bank is and its keys.
#[derive(Clone, Debug)]
pub struct BankClient {
    pub addr: String,
    pub bank_id: BankId,
    pub keys: PeerKeys,
    pub timeout: Duration,
    /// Connect from this local address (a host with several addresses, or tests on
    /// 127.0.0.x); `None` lets the kernel choose.
    pub bind_ip: Option<IpAddr>,
    /// Where nonce timestamps and coin expiry checks get the time.
    pub clock: Arc<dyn Clock>,
    /// Where session keys and nonces get their randomness.
    pub entropy: Arc<dyn Entropy>,
    /// Keys the bank has replaced: its coins minted under them stay good until they expire
    /// (see [`BankClient::verify_coin`]). Its answers are signed with `keys` only.
    pub retired: Vec<pmtp_proto::keys::VerifyingKey>,
}

/// Connects to `addr` (`host:port`), from `bind_ip` when given.
pub async fn connect(addr: &str, bind_ip: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = bind_ip else { return TcpStream::connect(addr).await };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for target in tokio::net::lookup_host(addr).await? {
        let socket = if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        if socket.bind(std::net::SocketAddr::new(ip, 0)).is_err() {
            continue;
        }
        match socket.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A request connected and sealed by [`BankClient::prepare`], not sent yet. Dropped, it
/// closes the connection unsent.
pub struct Prepared<Q> {
    framed: Framed<TcpStream, PmtpCodec>,
    request: Q,
    frame: Frame,
}

impl<Q: Request> Prepared<Q> {
    /// The request as it will be sent.
    pub fn request(&self) -> &Q {
        &self.request
    }
}

/// A deposit connected and signed by [`BankClient::prepare_deposit`], not sent yet.
pub struct PreparedDeposit {
    prepared: Prepared<DepositCoinsRequest>,
    hash: [u8; 32],
}

impl PreparedDeposit {
    pub fn request(&self) -> &DepositCoinsRequest {
        self.prepared.request()
    }
}

impl BankClient {
    pub fn new(addr: impl Into<String>, bank: &PublicIdentity) -> Result<Self, ClientError> {
        let keys = bank.parse().map_err(|e| ClientError::BadAnswer(format!("bank key: {e}")))?;
        let bank_id = BankId::new(keys.name.as_str()).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        Ok(BankClient {
            addr: addr.into(),
            bank_id,
            keys,
            timeout: Duration::from_secs(15),
            bind_ip: None,
            clock: Arc::new(SystemClock),
            entropy: Arc::new(OsEntropy),
            retired: Vec::new(),
        })
    }

    /// Sends one request built by `build` (given this side's address) and returns the
    /// bank's response, or its refusal as an error.
    pub async fn call<Q, F>(&self, build: F) -> Result<Q::Response, ClientError>
    where
        Q: Request,
        F: FnOnce(IpAddr, u64) -> Result<Q, ClientError>,
    {
        self.send(self.prepare(build).await?).await
    }

    /// The first half of [`BankClient::call`]: connects and builds (and seals) the request,
    /// sending nothing yet. A caller can prepare a request (its signature) while it makes
    /// durable what the request depends on, then [`BankClient::send`] it.
    pub async fn prepare<Q, F>(&self, build: F) -> Result<Prepared<Q>, ClientError>
    where
        Q: Request,
        F: FnOnce(IpAddr, u64) -> Result<Q, ClientError>,
    {
        let stream = tokio::time::timeout(self.timeout, connect(&self.addr, self.bind_ip))
            .await
            .map_err(|_| ClientError::Connect { addr: self.addr.clone(), message: "timed out".into() })?
            .map_err(|e| ClientError::Connect { addr: self.addr.clone(), message: e.to_string() })?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(|e| ClientError::Io(e.to_string()))?.ip();
        let request = build(local, self.clock.now())?;
        let frame = Frame::seal_to(&mut entropy::rng(&*self.entropy), &self.keys.x25519, &request)?;
        Ok(Prepared { framed: Framed::new(stream, PmtpCodec::default()), request, frame })
    }

    /// The second half of [`BankClient::call`]: sends a prepared request and returns the
    /// bank's response, or its refusal as an error.
    pub async fn send<Q: Request>(&self, prepared: Prepared<Q>) -> Result<Q::Response, ClientError> {
        let Prepared { mut framed, request, frame } = prepared;
        let exchange = async {
            framed.send(frame).await.map_err(|e| ClientError::Io(e.to_string()))?;
            match framed.next().await {
                Some(Ok(f)) => Ok(f),
                Some(Err(e)) => Err(ClientError::Io(e.to_string())),
                None => Err(ClientError::Closed),
            }
        };
        let reply = tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ClientError::Timeout)??;
        match reply.open_reply::<Q>(request.session_key())? {
            Reply::Response(r) => Ok(r),
            Reply::Refused(r) => Err(ClientError::Refused(r)),
            Reply::PlainRefused(p) => Err(ClientError::PlainRefused(p)),
        }
    }

    /// Adds the keys this bank has replaced (its earlier public identities, as text), so its
    /// coins minted under them still verify until they expire.
    pub fn with_retired(mut self, identities: &[String]) -> Result<Self, ClientError> {
        for text in identities {
            let bad = |e: &dyn std::fmt::Display| {
                ClientError::BadAnswer(format!("retired key of {}: {e}", self.bank_id.escaped()))
            };
            let keys = PublicIdentity::from_text(text).and_then(|p| p.parse()).map_err(|e| bad(&e))?;
            if keys.name.as_str() != self.bank_id.as_str() {
                return Err(bad(&format_args!("it is a key of {}", keys.name.escaped())));
            }
            self.retired.push(keys.verifying);
        }
        Ok(self)
    }

    /// Checks a coin of this bank handed over by someone (a buyer, a depositor): signed by
    /// its current key or a retired one, unexpired.
    pub fn verify_coin(&self, coin: &Coin, now: u64) -> Result<VerifiedCoin, CoinError> {
        coin.verify_among(&self.bank_id, std::iter::once(&self.keys.verifying).chain(&self.retired), now)
    }

    /// Checks coins this bank minted for us: signed by its current key (or, for a retried
    /// request, a key it has since retired), unexpired, summing to `expected`.
    pub fn check_coins(&self, coins: &[Coin], expected: Amount) -> Result<(), ClientError> {
        let now = self.clock.now();
        let mut total = Amount::ZERO;
        for c in coins {
            // The retired keys too: a retry by request id returns the coins minted for the
            // first attempt, which may predate a rotation.
            let v = self.verify_coin(c, now).map_err(|e| match e {
                CoinError::UnknownKey { key_id, .. } => ClientError::BadAnswer(format!(
                    "bank {} signed new coins with key {key_id}, which is not the key in this config: \
                     it may have replaced its key; get its new public key and run `payme-wallet bank set \
                     --id {} --public-key FILE`",
                    self.bank_id.escaped(),
                    self.bank_id.escaped()
                )),
                e => ClientError::BadAnswer(e.to_string()),
            })?;
            total = total.checked_add(v.value()).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        }
        if total != expected {
            return Err(ClientError::BadAnswer(format!("coins total {total}, expected {expected}")));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn withdraw(
        &self,
        owner: &Identity,
        account: AccountId,
        name: &str,
        password: &str,
        request_id: [u8; 16],
        amount: Amount,
        denominations: Vec<Denomination>,
    ) -> Result<WithdrawCoinsResponse, ClientError> {
        let name = Name::new(name).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let password = Password::new(password).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let resp = self
            .call::<WithdrawCoinsRequest, _>(|ip, now| {
                let mut rng = entropy::rng(&*self.entropy);
                let body = WithdrawCoins {
                    account,
                    name,
                    password,
                    request_id,
                    amount,
                    denominations,
                    session_key: SessionKey::generate(&mut rng),
                    nonce: Nonce::new(&mut rng, ip, now),
                };
                Signed::sign(body, &owner.signing).map_err(|e| ClientError::BadAnswer(e.to_string()))
            })
            .await?;
        self.check_coins(&resp.coins, amount)?;
        Ok(resp)
    }

    pub async fn deposit(
        &self,
        owner: &Identity,
        account: AccountId,
        name: &str,
        request_id: [u8; 16],
        coins: Vec<Coin>,
    ) -> Result<DepositCoinsResponse, ClientError> {
        self.send_deposit(self.prepare_deposit(owner, account, name, request_id, coins).await?).await
    }

    /// Connects and signs a deposit without sending it ([`BankClient::prepare`]).
    pub async fn prepare_deposit(
        &self,
        owner: &Identity,
        account: AccountId,
        name: &str,
        request_id: [u8; 16],
        coins: Vec<Coin>,
    ) -> Result<PreparedDeposit, ClientError> {
        let name = Name::new(name).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let hash = coins_hash(coins.iter().map(|c| &c.0.body.serial));
        let prepared = self
            .prepare::<DepositCoinsRequest, _>(|ip, now| {
                let mut rng = entropy::rng(&*self.entropy);
                let body = DepositCoins {
                    account,
                    name,
                    request_id,
                    coins,
                    session_key: SessionKey::generate(&mut rng),
                    nonce: Nonce::new(&mut rng, ip, now),
                };
                Signed::sign(body, &owner.signing).map_err(|e| ClientError::BadAnswer(e.to_string()))
            })
            .await?;
        Ok(PreparedDeposit { prepared, hash })
    }

    /// Sends a prepared deposit and checks the bank's acknowledgement: signed by the bank,
    /// for these coins, this request and this account.
    pub async fn send_deposit(&self, deposit: PreparedDeposit) -> Result<DepositCoinsResponse, ClientError> {
        let PreparedDeposit { prepared, hash } = deposit;
        let (request_id, account) = (prepared.request.body.request_id, prepared.request.body.account);
        let resp = self.send(prepared).await?;
        let ack = resp
            .ack
            .verify(&self.keys.verifying)
            .map_err(|_| ClientError::BadAnswer("acknowledgement not signed by the bank".into()))?;
        if ack.coins_hash != hash || ack.request_id != request_id || ack.account != account {
            return Err(ClientError::BadAnswer("acknowledgement is for another deposit".into()));
        }
        Ok(resp)
    }

    pub async fn exchange(
        &self,
        request_id: [u8; 16],
        coins: Vec<Coin>,
        denominations: Vec<Denomination>,
    ) -> Result<ExchangeCoinsResponse, ClientError> {
        let total =
            Amount::checked_sum(coins.iter().map(|c| c.value())).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let resp = self
            .call::<ExchangeCoinsRequest, _>(|ip, now| {
                let mut rng = entropy::rng(&*self.entropy);
                Ok(ExchangeCoinsRequest {
                    request_id,
                    coins,
                    denominations,
                    session_key: SessionKey::generate(&mut rng),
                    nonce: Nonce::new(&mut rng, ip, now),
                })
            })
            .await?;
        self.check_coins(&resp.coins, total)?;
        Ok(resp)
    }

    pub async fn statement(
        &self,
        owner: &Identity,
        account: AccountId,
        name: &str,
        since: Option<u64>,
    ) -> Result<BankStatementResponse, ClientError> {
        let name = Name::new(name).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        self.call::<BankStatementRequest, _>(|ip, now| {
            let mut rng = entropy::rng(&*self.entropy);
            let body = BankStatement {
                account,
                name,
                since,
                session_key: SessionKey::generate(&mut rng),
                nonce: Nonce::new(&mut rng, ip, now),
            };
            Signed::sign(body, &owner.signing).map_err(|e| ClientError::BadAnswer(e.to_string()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_answer_leaves_the_outcome_unknown() {
        assert!(ClientError::Timeout.outcome_unknown());
        assert!(ClientError::Closed.outcome_unknown());
        assert!(ClientError::Io("reset".into()).outcome_unknown());
        let not_sent = ClientError::Connect { addr: "x:1".into(), message: "refused".into() };
        assert!(!not_sent.outcome_unknown(), "a request never sent took no effect");
        assert!(!ClientError::BadAnswer("x".into()).outcome_unknown());
        assert!(!ClientError::Timeout.is_definitive());
    }
}
