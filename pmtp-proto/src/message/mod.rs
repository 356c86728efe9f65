//! The six PMTP message types, each with request, response and refusal: 18 identifiers.
//!
//! One file per message type. Each identifier has one Rust type (its plaintext) and one
//! protection, fixed by the identifier:
//!
//! | protection | identifiers | envelope variant |
//! |---|---|---|
//! | sealed to the receiver's X25519 key | every `*_request` but ask_payment's; ask_payment_response; ask_payment_refusal | `Sealed` |
//! | sealed under the request's session key | every other `*_response` and `*_refusal` | `Session` |
//! | cleartext, signed by the merchant | ask_payment_request | `Clear` |
//!
//! Any refusal identifier may also carry a `Plain` refusal, for requests that could not
//! be opened. See `docs/PMTP.md` for the byte layout.

pub mod ask_payment;
pub mod bank_statement;
pub mod deposit_coins;
pub mod exchange_coins;
pub mod pay_coins;
pub mod withdraw_coins;

pub use ask_payment::*;
pub use bank_statement::*;
pub use deposit_coins::*;
pub use exchange_coins::*;
pub use pay_coins::*;
pub use withdraw_coins::*;

use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// What the identifier's byte says: high nibble the message type, low nibble the kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u8);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    WithdrawCoins,
    DepositCoins,
    BankStatement,
    ExchangeCoins,
    AskPayment,
    PayCoins,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Request,
    Response,
    Refusal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Sealed box to the receiver's X25519 key.
    Sealed,
    /// AES-256-GCM under the session key of the request being answered.
    Session,
    /// Cleartext (only ask_payment_request, which is signed).
    Clear,
}

impl MessageType {
    pub const ALL: [MessageType; 6] = [
        MessageType::WithdrawCoins,
        MessageType::DepositCoins,
        MessageType::BankStatement,
        MessageType::ExchangeCoins,
        MessageType::AskPayment,
        MessageType::PayCoins,
    ];
    fn nibble(self) -> u8 {
        match self {
            MessageType::WithdrawCoins => 0,
            MessageType::DepositCoins => 1,
            MessageType::BankStatement => 2,
            MessageType::ExchangeCoins => 3,
            MessageType::AskPayment => 4,
            MessageType::PayCoins => 5,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MessageType::WithdrawCoins => "withdraw_coins",
            MessageType::DepositCoins => "deposit_coins",
            MessageType::BankStatement => "bank_statement",
            MessageType::ExchangeCoins => "exchange_coins",
            MessageType::AskPayment => "ask_payment",
            MessageType::PayCoins => "pay_coins",
        }
    }
    pub fn id(self, kind: Kind) -> MessageId {
        let k = match kind {
            Kind::Request => 1,
            Kind::Response => 2,
            Kind::Refusal => 3,
        };
        MessageId((self.nibble() << 4) | k)
    }
}

impl MessageId {
    /// All 18 identifiers, in wire order.
    pub fn all() -> impl Iterator<Item = MessageId> {
        MessageType::ALL.into_iter().flat_map(|t| [Kind::Request, Kind::Response, Kind::Refusal].map(|k| t.id(k)))
    }

    /// Parses an identifier byte; `None` for bytes no identifier uses.
    pub fn from_byte(b: u8) -> Option<MessageId> {
        let ty = *MessageType::ALL.get(usize::from(b >> 4))?;
        matches!(b & 0x0f, 1..=3).then_some(MessageId(b)).filter(|_| ty.nibble() == b >> 4)
    }

    pub fn byte(self) -> u8 {
        self.0
    }
    pub fn message_type(self) -> MessageType {
        // from_byte only admits high nibbles 0..=5.
        MessageType::ALL[usize::from(self.0 >> 4).min(5)]
    }
    pub fn kind(self) -> Kind {
        match self.0 & 0x0f {
            1 => Kind::Request,
            2 => Kind::Response,
            _ => Kind::Refusal,
        }
    }

    pub fn protection(self) -> Protection {
        match (self.message_type(), self.kind()) {
            (MessageType::AskPayment, Kind::Request) => Protection::Clear,
            (MessageType::AskPayment, _) => Protection::Sealed,
            (_, Kind::Request) => Protection::Sealed,
            _ => Protection::Session,
        }
    }

    pub fn name(self) -> String {
        let kind = match self.kind() {
            Kind::Request => "request",
            Kind::Response => "response",
            Kind::Refusal => "refusal",
        };
        format!("{}_{}", self.message_type().name(), kind)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:02x})", self.name(), self.0)
    }
}
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A typed PMTP message: its plaintext type and identifier.
pub trait Message: Serialize + DeserializeOwned + fmt::Debug {
    const ID: MessageId;
}

macro_rules! message_ids {
    ($( $ty:ty => $mt:ident, $kind:ident; )*) => {
        $( impl Message for $ty { const ID: MessageId = MessageId((MessageType::$mt as u8) << 4 | (Kind::$kind as u8 + 1)); } )*
    };
}

message_ids! {
    WithdrawCoinsRequest => WithdrawCoins, Request;
    WithdrawCoinsResponse => WithdrawCoins, Response;
    WithdrawCoinsRefusal => WithdrawCoins, Refusal;
    DepositCoinsRequest => DepositCoins, Request;
    DepositCoinsResponse => DepositCoins, Response;
    DepositCoinsRefusal => DepositCoins, Refusal;
    BankStatementRequest => BankStatement, Request;
    BankStatementResponse => BankStatement, Response;
    BankStatementRefusal => BankStatement, Refusal;
    ExchangeCoinsRequest => ExchangeCoins, Request;
    ExchangeCoinsResponse => ExchangeCoins, Response;
    ExchangeCoinsRefusal => ExchangeCoins, Refusal;
    AskPaymentRequest => AskPayment, Request;
    AskPaymentResponse => AskPayment, Response;
    AskPaymentRefusal => AskPayment, Refusal;
    PayCoinsRequest => PayCoins, Request;
    PayCoinsResponse => PayCoins, Response;
    PayCoinsRefusal => PayCoins, Refusal;
}

/// Requests that carry a session key for their reply.
pub trait Request: Message {
    type Response: Message;
    type Refusal: Message + From<crate::refusal::Refusal> + Into<crate::refusal::Refusal>;
    fn session_key(&self) -> &crate::seal::SessionKey;
    fn nonce(&self) -> &crate::nonce::Nonce;
}

macro_rules! refusal_newtypes {
    ($( $name:ident ),*) => {
        $(
            /// An authenticated refusal of this message type's request.
            #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
            #[serde(transparent)]
            pub struct $name(pub crate::refusal::Refusal);
            impl From<crate::refusal::Refusal> for $name {
                fn from(r: crate::refusal::Refusal) -> Self { $name(r) }
            }
            impl From<$name> for crate::refusal::Refusal {
                fn from(r: $name) -> Self { r.0 }
            }
        )*
    };
}
pub(crate) use refusal_newtypes;

/// `impl Request` for a request type whose session key and nonce sit at `self.<path>`.
macro_rules! request {
    ($req:ty => $resp:ty, $refusal:ty $(, $path:ident)*) => {
        impl super::Request for $req {
            type Response = $resp;
            type Refusal = $refusal;
            fn session_key(&self) -> &crate::seal::SessionKey {
                &self $(.$path)* .session_key
            }
            fn nonce(&self) -> &crate::nonce::Nonce {
                &self $(.$path)* .nonce
            }
        }
    };
}
pub(crate) use request;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighteen_distinct_identifiers_round_trip() {
        let ids: Vec<_> = MessageId::all().collect();
        assert_eq!(ids.len(), 18);
        let mut bytes: Vec<u8> = ids.iter().map(|i| i.byte()).collect();
        bytes.dedup();
        assert_eq!(bytes.len(), 18);
        for id in &ids {
            assert_eq!(MessageId::from_byte(id.byte()), Some(*id));
        }
        let known: std::collections::HashSet<u8> = bytes.into_iter().collect();
        for b in 0..=255u8 {
            assert_eq!(MessageId::from_byte(b).is_some(), known.contains(&b), "byte {b:#x}");
        }
        assert_eq!(WithdrawCoinsRequest::ID.byte(), 0x01);
        assert_eq!(PayCoinsRefusal::ID.byte(), 0x53);
        assert_eq!(AskPaymentRequest::ID.protection(), Protection::Clear);
        assert_eq!(AskPaymentRefusal::ID.protection(), Protection::Sealed);
        assert_eq!(DepositCoinsResponse::ID.protection(), Protection::Session);
        assert_eq!(ExchangeCoinsRequest::ID.name(), "exchange_coins_request");
    }
}
