//! The streaming frame decoder on arbitrary bytes, fed in arbitrary chunks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| *b as usize).unwrap_or(1).max(1);
    let mut d = pmtp_proto::FrameDecoder::new(64 * 1024);
    let mut buf = bytes::BytesMut::new();
    for chunk in data.chunks(split) {
        buf.extend_from_slice(chunk);
        match d.decode(&mut buf) {
            Ok(Some(f)) => {
                let _ = f.envelope();
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let _ = pmtp_proto::Frame::decode_exact(data, 64 * 1024);
});
