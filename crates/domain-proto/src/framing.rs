//! One protobuf message per frame (docs/protocol.md).
//!
//! A frame is a 4-byte big-endian length `n`, then `n` bytes holding the message
//! in its length-delimited form: a varint length, then the body. Posemesh peers
//! write this shape, so we write it too, and we check both lengths on read.
//!
//! Task streams interleave frames with raw content bytes, so these functions read
//! exactly one frame and nothing past it: a buffering codec (`FramedRead`) would
//! swallow the raw bytes that follow.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default limit on one frame, in bytes (docs/design.md §9).
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// The size of the big-endian length prefix.
const PREFIX_LEN: usize = 4;

/// Up to this much is reserved before a frame's bytes have arrived; the rest grows
/// as they do, so a peer that announces a large frame and stalls costs little.
const INITIAL_RESERVE: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("stream i/o failed")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced frame length.
        len: u64,
        /// The reader's limit.
        limit: usize,
    },
    /// The stream ended inside a frame (in its prefix or its body).
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needed.
        expected: u64,
        /// Bytes that arrived before the end of the stream.
        got: u64,
    },
    /// The frame does not start with a valid varint.
    #[error("frame of {frame_len} bytes does not start with a valid varint length")]
    BadVarint {
        /// The frame length from the prefix.
        frame_len: u32,
    },
    /// The varint length and the 4-byte prefix disagree.
    #[error(
        "varint length {varint} disagrees with the frame length {frame_len} (varint of {varint_len} bytes)"
    )]
    LengthMismatch {
        /// The frame length from the 4-byte prefix.
        frame_len: u32,
        /// The body length from the varint.
        varint: u64,
        /// How many bytes the varint took.
        varint_len: usize,
    },
    /// The body is not a valid encoding of the expected message.
    #[error("cannot decode {message}")]
    Decode {
        /// The message type expected.
        message: &'static str,
        /// What protobuf decoding found wrong.
        source: prost::DecodeError,
    },
    /// A message too large for a 4-byte length was given to write.
    #[error("message of {len} bytes is too large for a frame")]
    Unencodable {
        /// The length-delimited message size.
        len: usize,
    },
}

/// Encodes `message` as one frame: prefix, varint length, body.
///
/// # Errors
/// [`FrameError::Unencodable`] when the message does not fit a 4-byte length.
pub fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, FrameError> {
    let body_len = message.encoded_len();
    let delimited_len = prost::length_delimiter_len(body_len) + body_len;
    let frame_len =
        u32::try_from(delimited_len).map_err(|_| FrameError::Unencodable { len: delimited_len })?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + delimited_len);
    buf.extend_from_slice(&frame_len.to_be_bytes());
    // Encoding into a Vec only fails when it lacks capacity, and it grows as needed.
    message
        .encode_length_delimited(&mut buf)
        .map_err(|_| FrameError::Unencodable { len: delimited_len })?;
    Ok(buf)
}

/// Writes `message` as one frame and flushes, so that a peer waiting for it sees it.
///
/// # Errors
/// [`FrameError::Io`] when the stream fails, [`FrameError::Unencodable`] when the
/// message is larger than a frame can be.
pub async fn write_message<M, W>(writer: &mut W, message: &M) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode_frame(message)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame holding an `M`, refusing frames longer than `limit` bytes.
///
/// # Errors
/// A [`FrameError`] naming what was wrong; the end of the stream before a frame
/// is [`FrameError::Truncated`] with `got: 0`.
pub async fn read_message<M, R>(reader: &mut R, limit: usize) -> Result<M, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin + ?Sized,
{
    match read_message_or_eof(reader, limit).await? {
        Some(message) => Ok(message),
        None => Err(FrameError::Truncated {
            expected: PREFIX_LEN as u64,
            got: 0,
        }),
    }
}

/// Reads one frame holding an `M`, or `None` when the stream ends cleanly before
/// the first byte of a frame (the peer is done).
///
/// # Errors
/// A [`FrameError`] naming what was wrong with the frame or the stream.
pub async fn read_message_or_eof<M, R>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin + ?Sized,
{
    match read_frame_or_eof(reader, limit).await? {
        Some(frame) => frame.decode().map(Some),
        None => Ok(None),
    }
}

/// One frame's message as it arrived, not yet decoded: what a reader inspects (with
/// [`crate::wire`]) before it builds the message, to refuse one that would cost too much
/// memory (a few bytes per element of a repeated field become a struct each).
#[derive(Debug, Clone)]
pub struct Frame {
    bytes: Vec<u8>,
    /// Where the body starts, after its varint length.
    body: usize,
}

impl Frame {
    /// The message's encoding.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body..]
    }

    /// Decodes the message.
    ///
    /// # Errors
    /// [`FrameError::Decode`].
    pub fn decode<M: Message + Default>(&self) -> Result<M, FrameError> {
        M::decode(self.body()).map_err(|source| FrameError::Decode {
            message: std::any::type_name::<M>(),
            source,
        })
    }
}

/// Reads one frame, refusing frames longer than `limit` bytes, without decoding it.
///
/// # Errors
/// As [`read_message`], but for decoding.
pub async fn read_frame<R>(reader: &mut R, limit: usize) -> Result<Frame, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_frame_or_eof(reader, limit)
        .await?
        .ok_or(FrameError::Truncated {
            expected: PREFIX_LEN as u64,
            got: 0,
        })
}

/// As [`read_frame`], or `None` when the stream ends cleanly before a frame.
async fn read_frame_or_eof<R>(reader: &mut R, limit: usize) -> Result<Option<Frame>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_up_to(reader, &mut prefix).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < PREFIX_LEN {
        return Err(FrameError::Truncated {
            expected: PREFIX_LEN as u64,
            got: got as u64,
        });
    }
    let frame_len = u32::from_be_bytes(prefix);
    // Checked before anything is allocated for the frame.
    if u64::from(frame_len) > limit as u64 {
        return Err(FrameError::TooLarge {
            len: frame_len.into(),
            limit,
        });
    }

    let expected = u64::from(frame_len);
    let mut frame = Vec::with_capacity((frame_len as usize).min(INITIAL_RESERVE));
    let got = reader.take(expected).read_to_end(&mut frame).await?;
    if (got as u64) < expected {
        return Err(FrameError::Truncated {
            expected,
            got: got as u64,
        });
    }

    let mut rest = frame.as_slice();
    let varint = prost::encoding::decode_varint(&mut rest)
        .map_err(|_| FrameError::BadVarint { frame_len })?;
    let varint_len = frame.len() - rest.len();
    if varint != rest.len() as u64 {
        return Err(FrameError::LengthMismatch {
            frame_len,
            varint,
            varint_len,
        });
    }
    Ok(Some(Frame {
        bytes: frame,
        body: varint_len,
    }))
}

/// Fills `buf` unless the stream ends first; returns how many bytes arrived.
async fn read_up_to<R>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
