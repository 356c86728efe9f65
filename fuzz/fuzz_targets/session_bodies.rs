//! Every reply sealed under a session key, opened with a fixed key, and the plaintext
//! decoders of each response and refusal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pmtp_proto::frame::decode_body;
use pmtp_proto::*;

fuzz_target!(|data: &[u8]| {
    let key = SessionKey([3u8; 32]);
    let body = bytes::Bytes::copy_from_slice(data);
    macro_rules! each { ($($q:ty => $r:ty, $f:ty);*) => { $(
        let _ = Frame { id: <$r as Message>::ID, body: body.clone() }.open_reply::<$q>(&key);
        let _ = Frame { id: <$f as Message>::ID, body: body.clone() }.open_reply::<$q>(&key);
        let _ = decode_body::<$r>(data);
        let _ = decode_body::<$f>(data);
    )* } }
    each!(WithdrawCoinsRequest => WithdrawCoinsResponse, WithdrawCoinsRefusal;
          DepositCoinsRequest => DepositCoinsResponse, DepositCoinsRefusal;
          BankStatementRequest => BankStatementResponse, BankStatementRefusal;
          ExchangeCoinsRequest => ExchangeCoinsResponse, ExchangeCoinsRefusal;
          PayCoinsRequest => PayCoinsResponse, PayCoinsRefusal);
});
