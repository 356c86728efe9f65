//! The tokio-util `Decoder`/`Encoder` adapter over [`FrameDecoder`]: no logic of its own.

use crate::frame::{Frame, FrameDecoder, FrameError};
use bytes::BytesMut;

/// Frames a byte stream as PMTP frames.
#[derive(Debug, Default, Clone)]
pub struct PmtpCodec(pub FrameDecoder);

impl PmtpCodec {
    pub fn new(max_body: usize) -> Self {
        PmtpCodec(FrameDecoder::new(max_body))
    }
}

/// IO errors of the transport, or a frame error that ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl tokio_util::codec::Decoder for PmtpCodec {
    type Item = Frame;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.0.decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Frame> for PmtpCodec {
    type Error = CodecError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst)?)
    }
}
