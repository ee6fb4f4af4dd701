//! Header fields and the field values the framers and the resume rule need.

use super::FramingErrorKind;

/// One header field as received. The value keeps its bytes (obs-text is not UTF-8); leading and
/// trailing whitespace is already removed by the head parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The first value of header `name` (case-insensitive), if any.
pub(super) fn first_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.is(name))
        .map(|h| h.value.as_slice())
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The elements of every `name` header, split on commas (RFC 9110 §5.6.1 lists), trimmed, with
/// empty elements skipped.
fn list_elements<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |h| h.is(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Whether the `Connection` header lists `token` (case-insensitive).
pub(super) fn connection_has(headers: &[Header], token: &str) -> bool {
    list_elements(headers, "connection").any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether some `name` header lists `token` (case-insensitive).
pub(super) fn list_has(headers: &[Header], name: &str, token: &str) -> bool {
    list_elements(headers, name).any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// What the `Transfer-Encoding` headers say about framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransferEncoding {
    Absent,
    /// The final coding is `chunked`, applied once: the body is chunked.
    ChunkedFinal,
    /// Some coding other than `chunked` is final: a reply is then read until close, a request
    /// is refused (RFC 9112 §6.3).
    OtherFinal,
}

pub(super) fn transfer_encoding(headers: &[Header]) -> Result<TransferEncoding, FramingErrorKind> {
    if !headers.iter().any(|h| h.is("transfer-encoding")) {
        return Ok(TransferEncoding::Absent);
    }
    let unsupported = || FramingErrorKind::UnsupportedTransferEncoding {
        value: headers
            .iter()
            .filter(|h| h.is("transfer-encoding"))
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let codings: Vec<&[u8]> = list_elements(headers, "transfer-encoding").collect();
    let Some((last, earlier)) = codings.split_last() else {
        return Err(unsupported());
    };
    // Anything but the bare name (parameters, odd spacing) is a coding we do not know, and a
    // `chunked` hidden anywhere but at the end is a classic desynchronisation trick.
    if earlier.iter().any(|c| is_chunked_name(c)) {
        return Err(unsupported());
    }
    if last.eq_ignore_ascii_case(b"chunked") {
        Ok(TransferEncoding::ChunkedFinal)
    } else if is_chunked_name(last) {
        Err(unsupported())
    } else {
        Ok(TransferEncoding::OtherFinal)
    }
}

/// A coding element whose name is `chunked`, with or without parameters.
fn is_chunked_name(element: &[u8]) -> bool {
    let name_end = element
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(element.len());
    element[..name_end].eq_ignore_ascii_case(b"chunked")
}

/// The Content-Length, if present. A list of identical values counts as one (RFC 9110 §8.6);
/// differing values or anything but digits are refused.
pub(super) fn content_length(headers: &[Header]) -> Result<Option<u64>, FramingErrorKind> {
    let mut found: Option<u64> = None;
    for header in headers.iter().filter(|h| h.is("content-length")) {
        let invalid = || FramingErrorKind::InvalidContentLength {
            value: String::from_utf8_lossy(&header.value).into_owned(),
        };
        let mut elements = 0;
        for element in header.value.split(|&b| b == b',').map(trim_ows) {
            elements += 1;
            let value = parse_decimal(element).ok_or_else(invalid)?;
            match found {
                Some(first) if first != value => {
                    return Err(FramingErrorKind::ConflictingContentLengths {
                        first,
                        second: value,
                    })
                }
                _ => found = Some(value),
            }
        }
        if elements == 0 {
            return Err(invalid());
        }
    }
    Ok(found)
}

/// 1*DIGIT as a u64; no sign, no whitespace, no overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// An entity tag (RFC 9110 §8.8.3): `"opaque"` or `W/"opaque"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityTag {
    pub weak: bool,
    /// The bytes between the quotes.
    pub opaque: Vec<u8>,
}

impl EntityTag {
    /// Parses one entity tag; `None` unless `value` is exactly one well-formed tag.
    pub fn parse(value: &[u8]) -> Option<EntityTag> {
        let value = trim_ows(value);
        let (weak, quoted) = match value.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let opaque = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        // etagc = %x21 / %x23-7E / obs-text
        if !opaque
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        Some(EntityTag {
            weak,
            opaque: opaque.to_vec(),
        })
    }

    pub fn is_strong(&self) -> bool {
        !self.weak
    }

    /// The strong comparison of RFC 9110 §8.8.3.2, the one `If-Range` uses.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// The field value form, with quotes (and `W/` when weak).
    pub fn to_field_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.opaque.len() + 4);
        if self.weak {
            out.extend_from_slice(b"W/");
        }
        out.push(b'"');
        out.extend_from_slice(&self.opaque);
        out.push(b'"');
        out
    }
}

/// A satisfied byte range of a 206 reply: `Content-Range: bytes first-last/complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive, as on the wire.
    pub last: u64,
    /// `None` when the sender wrote `*`.
    pub complete_length: Option<u64>,
}

impl ContentRange {
    /// Parses `bytes first-last/complete` or `bytes first-last/*`; `None` for anything else
    /// (other units, unsatisfied ranges, inconsistent numbers).
    pub fn parse(value: &[u8]) -> Option<ContentRange> {
        let rest = strip_bytes_unit(value)?;
        let slash = rest.iter().position(|&b| b == b'/')?;
        let (range, complete) = (&rest[..slash], &rest[slash + 1..]);
        let dash = range.iter().position(|&b| b == b'-')?;
        let first = parse_decimal(&range[..dash])?;
        let last = parse_decimal(&range[dash + 1..])?;
        let complete_length = if complete == b"*" {
            None
        } else {
            Some(parse_decimal(complete)?)
        };
        // A last byte at u64::MAX (only possible with `*`) would make the range's length and
        // its end (`last + 1`) overflow; no representation is 2^64 bytes long.
        if first > last || last == u64::MAX || complete_length.is_some_and(|len| last >= len) {
            return None;
        }
        Some(ContentRange {
            first,
            last,
            complete_length,
        })
    }

    /// The complete length in the `Content-Range` of a 416 reply: `bytes */complete`.
    pub fn parse_unsatisfied(value: &[u8]) -> Option<u64> {
        parse_decimal(strip_bytes_unit(value)?.strip_prefix(b"*/")?)
    }

    /// Number of bytes the range covers.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Always false: a satisfied range covers at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What follows `bytes ` in a Content-Range value (any case of the unit).
fn strip_bytes_unit(value: &[u8]) -> Option<&[u8]> {
    let value = trim_ows(value);
    let unit_end = value.iter().position(|&b| b == b' ')?;
    value[..unit_end]
        .eq_ignore_ascii_case(b"bytes")
        .then(|| &value[unit_end + 1..])
}

/// Converts the parsed header fields of `httparse` to owned ones.
pub(super) fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<Header> {
    headers
        .iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// Appends `name: value\r\n`.
pub(super) fn encode_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
