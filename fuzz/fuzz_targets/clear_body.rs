//! The one cleartext message, ask_payment_request: decoding, key parsing, signature check.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pmtp_proto::*;

fuzz_target!(|data: &[u8]| {
    let f = Frame { id: <AskPaymentRequest as Message>::ID, body: bytes::Bytes::copy_from_slice(data) };
    if let Ok(ask) = f.open_clear::<AskPaymentRequest>() {
        if let Ok(keys) = ask.body.merchant.parse() {
            let _ = ask.verify(&keys.verifying);
        }
        let _ = ask.body.description.escaped();
    }
});
