//! bank_statement: the balance and ledger of an account, for its owner.

use super::AccountId;
use crate::keys::{Signable, Signed};
use crate::nonce::Nonce;
use crate::seal::SessionKey;
use crate::text::{BoundedString, Name};
use crate::Amount;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BankStatement {
    pub account: AccountId,
    pub name: Name,
    /// Only entries at or after this Unix second; `None` for all.
    pub since: Option<u64>,
    pub session_key: SessionKey,
    pub nonce: Nonce,
}

impl Signable for BankStatement {
    const DOMAIN: &'static [u8] = b"PMTP v1 bank_statement_request";
}

pub type BankStatementRequest = Signed<BankStatement>;

/// Which way money moved in a ledger entry, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Money paid in at the counter.
    CounterCredit,
    /// Coins withdrawn (a debit).
    Withdrawal,
    /// Coins deposited (a credit).
    Deposit,
    /// Money paid out at the counter (a debit).
    CounterDebit,
}

impl EntryKind {
    pub fn is_credit(self) -> bool {
        matches!(self, EntryKind::CounterCredit | EntryKind::Deposit)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: u64,
    /// Unix seconds.
    pub time: u64,
    pub kind: EntryKind,
    pub amount: Amount,
    pub balance_after: Amount,
    pub memo: BoundedString<256>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BankStatementResponse {
    pub account: AccountId,
    pub name: Name,
    pub balance: Amount,
    pub entries: Vec<LedgerEntry>,
    /// True when more entries matched than one response carries (ask again with `since`).
    pub truncated: bool,
    pub nonce: Nonce,
}

super::refusal_newtypes!(BankStatementRefusal);

super::request!(BankStatementRequest => BankStatementResponse, BankStatementRefusal, body);
