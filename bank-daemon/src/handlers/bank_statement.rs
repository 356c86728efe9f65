//! bank_statement: balance and ledger for the account's owner, read from a snapshot.

use super::Refuse;
use crate::Bank;
use pmtp_proto::{BankStatementRequest, BankStatementResponse, Nonce};
use std::net::IpAddr;
use std::sync::Arc;

pub async fn handle(
    bank: Arc<Bank>,
    req: Arc<BankStatementRequest>,
    peer: IpAddr,
    now: u64,
) -> Result<BankStatementResponse, Refuse> {
    let body = &req.body;
    let id = bank.authenticate(&body.account, body.name.as_str(), req.clone(), now).await?;
    let since = body.since.unwrap_or(0);
    let max = bank.config.limits.statement_max_entries;
    let (balance, mut entries) = bank
        .readers
        .read(move |tx| {
            let acct = tx.account(id)?;
            let entries = tx.ledger(id, since, max + 1)?;
            Ok((acct.map(|a| a.balance), entries))
        })
        .await?;
    let truncated = entries.len() > max;
    entries.truncate(max);
    Ok(BankStatementResponse {
        account: id,
        name: body.name.clone(),
        balance: balance.ok_or_else(|| Refuse::new(pmtp_proto::ReasonCode::UNKNOWN_ACCOUNT, "account closed"))?,
        entries,
        truncated,
        nonce: Nonce::new(&mut bank.rng(), bank.local_ip(peer), now),
    })
}
