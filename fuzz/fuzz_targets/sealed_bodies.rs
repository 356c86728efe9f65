//! Every body sealed to a receiver's key: a frame of each such identifier with arbitrary
//! bytes as its body, opened with a fixed secret. Also the plaintext decoders directly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pmtp_proto::frame::decode_body;
use pmtp_proto::*;

fuzz_target!(|data: &[u8]| {
    let secret = x25519_dalek::StaticSecret::from([7u8; 32]);
    let body = bytes::Bytes::copy_from_slice(data);
    macro_rules! each { ($($t:ty),*) => { $(
        let _ = Frame { id: <$t as Message>::ID, body: body.clone() }.open_sealed::<$t>(&secret);
        let _ = decode_body::<$t>(data);
    )* } }
    each!(WithdrawCoinsRequest, DepositCoinsRequest, BankStatementRequest, ExchangeCoinsRequest,
          PayCoinsRequest, AskPaymentResponse, AskPaymentRefusal);
});
