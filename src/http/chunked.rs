//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally and strictly, its data
//! discarded: no route takes a body, but its end must be found exactly, or the next request would
//! start in the wrong place.

use super::{HttpError, is_tchar};
use crate::limits::MAX_BODY_BYTES;

/// What `ChunkedDecoder::feed` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input that belong to the body (all of it, unless `done`).
    pub consumed: usize,
    /// The body ended within the input; bytes after `consumed` are the next request.
    pub done: bool,
}

/// An incremental, strict decoder of the chunked coding (RFC 9112 §7.1) that discards the data.
/// Fed any split of the same bytes, it gives the same result. Every byte of the coding counts
/// toward `MAX_BODY_BYTES`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: Chunk,
    size: u64,
    digits: u32,
    total: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Chunk {
    /// Reading the chunk size's hex digits.
    #[default]
    Size,
    /// After the size: whitespace and `;ext` up to CR.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Skipping this many data bytes.
    Data(u64),
    /// Expecting the CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting the LF ending a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is over.
    Done,
}

impl ChunkedDecoder {
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, HttpError> {
        let mut i = 0;
        while i < input.len() && self.state != Chunk::Done {
            if let Chunk::Data(left) = self.state {
                let take = left.min((input.len() - i) as u64);
                self.count(take)?;
                i += take as usize;
                self.state = if take == left { Chunk::DataCr } else { Chunk::Data(left - take) };
                continue;
            }
            self.count(1)?;
            self.state = self.step(input[i])?;
            i += 1;
        }
        Ok(Fed { consumed: i, done: self.state == Chunk::Done })
    }

    fn count(&mut self, n: u64) -> Result<(), HttpError> {
        self.total = self.total.saturating_add(n);
        if self.total > MAX_BODY_BYTES { Err(HttpError::BodyTooLarge) } else { Ok(()) }
    }

    fn step(&mut self, b: u8) -> Result<Chunk, HttpError> {
        let bad = |why| Err(HttpError::BadRequest(why));
        Ok(match self.state {
            Chunk::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self.size.saturating_mul(16).saturating_add(u64::from(digit));
                    self.digits += 1;
                    if self.size > MAX_BODY_BYTES {
                        return Err(HttpError::BodyTooLarge);
                    }
                    Chunk::Size
                }
                _ if self.digits == 0 => return bad("missing chunk size"),
                b'\r' => Chunk::SizeLf,
                b';' | b' ' | b'\t' => Chunk::Extension,
                _ => return bad("invalid chunk size"),
            },
            Chunk::Extension => match b {
                b'\r' => Chunk::SizeLf,
                b'\t' | b' '..=b'~' | 0x80.. => Chunk::Extension,
                _ => return bad("invalid byte in chunk extension"),
            },
            Chunk::SizeLf => match (b, self.size) {
                (b'\n', 0) => Chunk::TrailerStart,
                (b'\n', size) => Chunk::Data(size),
                _ => return bad("chunk size line not ended by CRLF"),
            },
            // Data is skipped in bulk by `feed`, never byte by byte.
            Chunk::Data(left) => Chunk::Data(left),
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => {
                self.size = 0;
                self.digits = 0;
                Chunk::Size
            }
            Chunk::DataCr | Chunk::DataLf => return bad("chunk data not followed by CRLF"),
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                _ if is_tchar(b) => Chunk::Trailer,
                _ => return bad("invalid trailer field"),
            },
            Chunk::Trailer => match b {
                b'\r' => Chunk::TrailerLf,
                b'\t' | b' '..=b'~' | 0x80.. => Chunk::Trailer,
                _ => return bad("invalid byte in trailer field"),
            },
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::EndLf if b == b'\n' => Chunk::Done,
            Chunk::TrailerLf | Chunk::EndLf => return bad("trailer line not ended by CRLF"),
            Chunk::Done => Chunk::Done,
        })
    }
}
