//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally and strictly, its data
//! discarded: no route takes a body, but its end must be found exactly, or the next request would
//! start in the wrong place.
//!
//! Strictly means the grammar exactly, byte by byte: a front end that reads a chunk line or a
//! trailer another way (`5 6` as 0x56, `0 1` as a chunk of 1) would frame the body differently,
//! and what is a body to one of us is a request to the other.
//!
//! ```text
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF      (last-chunk: size 0, no data)
//! chunk-size     = 1*HEXDIG
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-name = token
//! chunk-ext-val  = token / quoted-string
//! trailer-section = *( field-name ":" OWS field-value OWS CRLF )    then a final CRLF
//! ```

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
    /// Somewhere in the chunk extensions, up to the CR ending the size line.
    Ext(Ext),
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Skipping this many data bytes.
    Data(u64),
    /// Expecting the CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field's name (a token), up to its `:`.
    TrailerName,
    /// Inside a trailer field's value (OWS and field-value: HTAB, SP, VCHAR, obs-text).
    TrailerValue,
    /// Expecting the LF ending a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is over.
    Done,
}

/// Where in `chunk-ext` the decoder is. Whitespace (BWS) is allowed only where the grammar puts it:
/// before a `;`, after it, and around `=`; never at the end of the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// After the size or a value, and whitespace: only more whitespace or `;` may follow.
    BeforeSemi,
    /// After `;` (and any whitespace): the extension's name must start.
    NameStart,
    /// Inside the name (a token).
    Name,
    /// After the name and whitespace: `=`, or `;` for the next extension.
    AfterName,
    /// After `=` (and any whitespace): the value must start.
    ValueStart,
    /// Inside a token value.
    Token,
    /// Inside a quoted-string value, after its opening `"`.
    Quoted,
    /// After a `\` in a quoted string: the escaped byte.
    QuotedPair,
    /// Right after a quoted string's closing `"`.
    AfterQuoted,
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

    /// The state after byte `b`: one function per part of the grammar.
    fn step(&mut self, b: u8) -> Result<Chunk, HttpError> {
        match self.state {
            Chunk::Size => self.size_digit(b),
            Chunk::Ext(at) => extension(at, b),
            Chunk::SizeLf => match (b, self.size) {
                (b'\n', 0) => Ok(Chunk::TrailerStart),
                (b'\n', size) => Ok(Chunk::Data(size)),
                _ => bad("chunk size line not ended by CRLF"),
            },
            // Data is skipped in bulk by `feed`, never byte by byte.
            Chunk::Data(left) => Ok(Chunk::Data(left)),
            Chunk::DataCr if b == b'\r' => Ok(Chunk::DataLf),
            Chunk::DataLf if b == b'\n' => {
                self.size = 0;
                self.digits = 0;
                Ok(Chunk::Size)
            }
            Chunk::DataCr | Chunk::DataLf => bad("chunk data not followed by CRLF"),
            Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerValue | Chunk::TrailerLf | Chunk::EndLf => {
                trailer(self.state, b)
            }
            Chunk::Done => Ok(Chunk::Done),
        }
    }

    /// `chunk-size`, then what may end it: CR, `;`, or whitespace before a `;`.
    fn size_digit(&mut self, b: u8) -> Result<Chunk, HttpError> {
        if let Some(digit) = (b as char).to_digit(16) {
            self.size = self.size.saturating_mul(16).saturating_add(u64::from(digit));
            self.digits += 1;
            return if self.size > MAX_BODY_BYTES { Err(HttpError::BodyTooLarge) } else { Ok(Chunk::Size) };
        }
        match b {
            _ if self.digits == 0 => bad("missing chunk size"),
            b'\r' => Ok(Chunk::SizeLf),
            b';' => Ok(Chunk::Ext(Ext::NameStart)),
            b' ' | b'\t' => Ok(Chunk::Ext(Ext::BeforeSemi)),
            _ => bad("invalid chunk size"),
        }
    }
}

/// One byte of `chunk-ext` (see `Ext`). A CR ends the line only after a name or a value.
fn extension(at: Ext, b: u8) -> Result<Chunk, HttpError> {
    let ws = b == b' ' || b == b'\t';
    let next = match at {
        Ext::BeforeSemi | Ext::AfterName if b == b';' => Ext::NameStart,
        Ext::BeforeSemi if ws => Ext::BeforeSemi,
        Ext::NameStart if ws => Ext::NameStart,
        Ext::NameStart | Ext::Name if is_tchar(b) => Ext::Name,
        Ext::Name | Ext::AfterName if ws => Ext::AfterName,
        Ext::Name | Ext::AfterName if b == b'=' => Ext::ValueStart,
        Ext::ValueStart if ws => Ext::ValueStart,
        Ext::ValueStart if b == b'"' => Ext::Quoted,
        Ext::ValueStart | Ext::Token if is_tchar(b) => Ext::Token,
        Ext::Quoted if b == b'"' => Ext::AfterQuoted,
        Ext::Quoted if b == b'\\' => Ext::QuotedPair,
        // qdtext, and what a quoted-pair may escape (RFC 9110 §5.6.4).
        Ext::Quoted if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => Ext::Quoted,
        Ext::QuotedPair if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => Ext::Quoted,
        Ext::Name | Ext::Token | Ext::AfterQuoted if b == b';' => Ext::NameStart,
        Ext::Token | Ext::AfterQuoted if ws => Ext::BeforeSemi,
        Ext::Name | Ext::Token | Ext::AfterQuoted if b == b'\r' => return Ok(Chunk::SizeLf),
        _ => return bad("malformed chunk extension"),
    };
    Ok(Chunk::Ext(next))
}

/// One byte of the trailer section: each line a header field as httparse checks the head's (a
/// token, `:` right after it, then HTAB, SP, VCHAR or obs-text), then an empty line.
fn trailer(state: Chunk, b: u8) -> Result<Chunk, HttpError> {
    match state {
        Chunk::TrailerStart if b == b'\r' => Ok(Chunk::EndLf),
        Chunk::TrailerStart | Chunk::TrailerName if is_tchar(b) => Ok(Chunk::TrailerName),
        Chunk::TrailerName if b == b':' => Ok(Chunk::TrailerValue),
        Chunk::TrailerStart | Chunk::TrailerName => bad("malformed trailer field name"),
        Chunk::TrailerValue if b == b'\r' => Ok(Chunk::TrailerLf),
        Chunk::TrailerValue if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => Ok(Chunk::TrailerValue),
        Chunk::TrailerValue => bad("invalid byte in trailer field"),
        Chunk::TrailerLf if b == b'\n' => Ok(Chunk::TrailerStart),
        Chunk::EndLf if b == b'\n' => Ok(Chunk::Done),
        _ => bad("trailer line not ended by CRLF"),
    }
}

fn bad(why: &'static str) -> Result<Chunk, HttpError> {
    Err(HttpError::BadRequest(why))
}
