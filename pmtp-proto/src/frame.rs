//! Frames: a fixed 10-byte header, then a bincode body.
//!
//! ```text
//! offset 0  4 bytes  magic "PMTP"
//! offset 4  1 byte   protocol version (1)
//! offset 5  1 byte   message identifier
//! offset 6  4 bytes  body length, big-endian u32
//! offset 10 ...      body: bincode (fixed-width little-endian integers) of an Envelope
//! ```
//!
//! The decoder checks the whole header before it buffers a single body byte: a bad magic,
//! an unknown version or identifier, or a length over the configured maximum is an error at
//! once, and the claimed length is never allocated. Body decoding rejects trailing bytes.

use crate::message::{Kind, Message, MessageId, Protection, Request};
use crate::refusal::{PlainRefusal, ReasonCode, Refusal};
use crate::seal::{self, SealError, SealedBox, SessionBox, SessionKey};
use bincode::Options;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"PMTP";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 10;
/// Default and upper bound of the configurable maximum body length.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// One PMTP frame: an identifier and its still-encoded body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub id: MessageId,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a PMTP frame (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion { version: u8, id: Option<MessageId> },
    #[error("unknown message identifier 0x{0:02x}")]
    UnknownMessage(u8),
    #[error("body of {len} bytes is over the maximum of {max}")]
    TooLarge { len: u64, max: usize, id: MessageId },
    #[error("{0} bytes after the end of the frame")]
    Trailing(usize),
    #[error("frame is truncated")]
    Truncated,
}

impl FrameError {
    /// The refusal identifier a receiver can answer with, when the header named a request.
    pub fn refusal_id(&self) -> Option<MessageId> {
        let id = match self {
            FrameError::UnsupportedVersion { id, .. } => (*id)?,
            FrameError::TooLarge { id, .. } => *id,
            _ => return None,
        };
        (id.kind() == Kind::Request).then(|| id.message_type().id(Kind::Refusal))
    }
}

/// Decodes frames from a byte stream. Keeps the parsed header between calls so a body that
/// arrives in pieces is not re-parsed.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_body: usize,
    header: Option<(MessageId, usize)>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

impl FrameDecoder {
    pub fn new(max_body: usize) -> Self {
        FrameDecoder { max_body, header: None }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Parses and checks a header; the first bad field is the error.
    pub fn parse_header(&self, h: &[u8; HEADER_LEN]) -> Result<(MessageId, usize), FrameError> {
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let id = MessageId::from_byte(h[5]);
        if h[4] != VERSION {
            return Err(FrameError::UnsupportedVersion { version: h[4], id });
        }
        let id = id.ok_or(FrameError::UnknownMessage(h[5]))?;
        let len = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
        if len as u64 > self.max_body as u64 {
            return Err(FrameError::TooLarge { len: len.into(), max: self.max_body, id });
        }
        Ok((id, len as usize))
    }

    /// Takes one whole frame off the front of `buf`, or `None` if more bytes are needed.
    /// A prefix of a header is examined byte by byte, so garbage is refused as soon as the
    /// magic cannot match, without waiting for ten bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (id, len) = match self.header {
            Some(h) => h,
            None => {
                let n = buf.len().min(MAGIC.len());
                if buf[..n] != MAGIC[..n] {
                    let mut m = [0u8; 4];
                    m[..n].copy_from_slice(&buf[..n]);
                    return Err(FrameError::BadMagic(m));
                }
                if buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&buf[..HEADER_LEN]);
                let parsed = self.parse_header(&h)?;
                buf.advance(HEADER_LEN);
                // Safe to reserve now: `len` was checked against the maximum.
                buf.reserve(parsed.1.saturating_sub(buf.len()));
                self.header = Some(parsed);
                parsed
            }
        };
        if buf.len() < len {
            return Ok(None);
        }
        self.header = None;
        Ok(Some(Frame { id, body: buf.split_to(len).freeze() }))
    }
}

impl Frame {
    /// Appends the frame's bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = u32::try_from(self.body.len()).map_err(|_| FrameError::TooLarge {
            len: self.body.len() as u64,
            max: u32::MAX as usize,
            id: self.id,
        })?;
        dst.reserve(HEADER_LEN + self.body.len());
        dst.put_slice(&MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(self.id.byte());
        dst.put_u32(len);
        dst.put_slice(&self.body);
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut b = BytesMut::new();
        self.encode(&mut b)?;
        Ok(b.freeze())
    }

    /// Decodes exactly one frame from `bytes`: a truncated frame or trailing bytes are errors.
    pub fn decode_exact(bytes: &[u8], max_body: usize) -> Result<Frame, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let frame = FrameDecoder::new(max_body).decode(&mut buf)?.ok_or(FrameError::Truncated)?;
        if !buf.is_empty() {
            return Err(FrameError::Trailing(buf.len()));
        }
        Ok(frame)
    }
}

/// What a frame body holds: encoded with bincode, its variant index a little-endian u32.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// Sealed to the receiver's X25519 key.
    Sealed(SealedBox),
    /// Under the session key of the request being answered.
    Session(SessionBox),
    /// The bincode of the plaintext message (ask_payment_request only).
    Clear(Vec<u8>),
    /// An unauthenticated refusal for a request that could not be opened.
    Plain(PlainRefusal),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("malformed message body: {0}")]
    Body(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("expected {expected}, received {got}")]
    WrongMessage { expected: MessageId, got: MessageId },
    #[error("{id} may not carry this kind of body")]
    WrongEnvelope { id: MessageId },
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

impl From<&ProtoError> for ReasonCode {
    fn from(e: &ProtoError) -> ReasonCode {
        match e {
            ProtoError::Frame(FrameError::UnsupportedVersion { .. }) => ReasonCode::UNSUPPORTED_VERSION,
            ProtoError::Frame(FrameError::UnknownMessage(_)) => ReasonCode::UNKNOWN_MESSAGE,
            ProtoError::Frame(FrameError::TooLarge { .. }) => ReasonCode::FRAME_TOO_LARGE,
            ProtoError::Frame(_) | ProtoError::Body(_) | ProtoError::WrongEnvelope { .. } => ReasonCode::MALFORMED,
            ProtoError::Seal(_) => ReasonCode::DECRYPT_FAILED,
            ProtoError::WrongMessage { .. } => ReasonCode::UNEXPECTED_MESSAGE,
            ProtoError::Key(_) => ReasonCode::BAD_SIGNATURE,
        }
    }
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().reject_trailing_bytes()
}

/// Encodes a value the way every PMTP body is encoded.
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtoError> {
    options().serialize(value).map_err(|e| ProtoError::Body(e.to_string()))
}

/// Decodes a body: all bytes must be used, and no length inside may exceed the input.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    options().with_limit(bytes.len() as u64).deserialize(bytes).map_err(|e| ProtoError::Body(e.to_string()))
}

/// The associated data every sealed body authenticates: magic, version and identifier.
pub fn aad(id: MessageId) -> [u8; 6] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, id.byte()]
}

fn frame_of(id: MessageId, envelope: &Envelope) -> Result<Frame, ProtoError> {
    Ok(Frame { id, body: Bytes::from(encode_body(envelope)?) })
}

fn check_id<M: Message>(frame: &Frame) -> Result<(), ProtoError> {
    if frame.id != M::ID {
        return Err(ProtoError::WrongMessage { expected: M::ID, got: frame.id });
    }
    Ok(())
}

impl Frame {
    pub fn envelope(&self) -> Result<Envelope, ProtoError> {
        let env: Envelope = decode_body(&self.body)?;
        let ok = match (&env, self.id.protection()) {
            (Envelope::Plain(_), _) => self.id.kind() == Kind::Refusal,
            (Envelope::Sealed(_), Protection::Sealed)
            | (Envelope::Session(_), Protection::Session)
            | (Envelope::Clear(_), Protection::Clear) => true,
            _ => false,
        };
        if !ok {
            return Err(ProtoError::WrongEnvelope { id: self.id });
        }
        Ok(env)
    }

    /// Seals `msg` to `recipient` (requests, and ask_payment answers to a merchant).
    pub fn seal_to<M: Message, R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        recipient: &x25519_dalek::PublicKey,
        msg: &M,
    ) -> Result<Frame, ProtoError> {
        if M::ID.protection() != Protection::Sealed {
            return Err(ProtoError::WrongEnvelope { id: M::ID });
        }
        let plain = zeroize::Zeroizing::new(encode_body(msg)?);
        let sealed = seal::seal_to(rng, recipient, &aad(M::ID), &plain)?;
        frame_of(M::ID, &Envelope::Sealed(sealed))
    }

    /// Opens a frame sealed to us as message `M`.
    pub fn open_sealed<M: Message>(&self, secret: &x25519_dalek::StaticSecret) -> Result<M, ProtoError> {
        check_id::<M>(self)?;
        match self.envelope()? {
            Envelope::Sealed(b) => decode_body(&seal::open_sealed(secret, &aad(M::ID), &b)?),
            _ => Err(ProtoError::WrongEnvelope { id: self.id }),
        }
    }

    /// Seals a response or refusal under the request's session key.
    pub fn seal_session<M: Message, R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        key: &SessionKey,
        msg: &M,
    ) -> Result<Frame, ProtoError> {
        if M::ID.protection() != Protection::Session {
            return Err(ProtoError::WrongEnvelope { id: M::ID });
        }
        let plain = zeroize::Zeroizing::new(encode_body(msg)?);
        frame_of(M::ID, &Envelope::Session(key.seal(rng, &aad(M::ID), &plain)?))
    }

    pub fn open_session<M: Message>(&self, key: &SessionKey) -> Result<M, ProtoError> {
        check_id::<M>(self)?;
        match self.envelope()? {
            Envelope::Session(b) => decode_body(&key.open(&aad(M::ID), &b)?),
            _ => Err(ProtoError::WrongEnvelope { id: self.id }),
        }
    }

    /// The cleartext ask_payment_request.
    pub fn clear<M: Message>(msg: &M) -> Result<Frame, ProtoError> {
        if M::ID.protection() != Protection::Clear {
            return Err(ProtoError::WrongEnvelope { id: M::ID });
        }
        frame_of(M::ID, &Envelope::Clear(encode_body(msg)?))
    }

    pub fn open_clear<M: Message>(&self) -> Result<M, ProtoError> {
        check_id::<M>(self)?;
        match self.envelope()? {
            Envelope::Clear(b) => decode_body(&b),
            _ => Err(ProtoError::WrongEnvelope { id: self.id }),
        }
    }

    /// An unauthenticated refusal, for a request that could not be opened. `id` must be a
    /// refusal identifier.
    pub fn plain_refusal(id: MessageId, code: ReasonCode, text: &str) -> Result<Frame, ProtoError> {
        if id.kind() != Kind::Refusal {
            return Err(ProtoError::WrongEnvelope { id });
        }
        frame_of(id, &Envelope::Plain(PlainRefusal { code, text: crate::refusal::reason_text(text) }))
    }

    /// Opens the answer to request `Q` sent under `key`.
    pub fn open_reply<Q: Request>(&self, key: &SessionKey) -> Result<Reply<Q::Response>, ProtoError> {
        if self.id == Q::Response::ID {
            return self.open_session::<Q::Response>(key).map(Reply::Response);
        }
        if self.id == Q::Refusal::ID {
            return match self.envelope()? {
                Envelope::Plain(p) => Ok(Reply::PlainRefused(p)),
                Envelope::Session(_) => Ok(Reply::Refused(self.open_session::<Q::Refusal>(key)?.into())),
                _ => Err(ProtoError::WrongEnvelope { id: self.id }),
            };
        }
        Err(ProtoError::WrongMessage { expected: Q::Response::ID, got: self.id })
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply<R> {
    Response(R),
    /// An authenticated refusal (it came under our session key).
    Refused(Refusal),
    /// An unauthenticated refusal: the peer could not open the request.
    PlainRefused(PlainRefusal),
}
