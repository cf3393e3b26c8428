//! Primitive field codec: little-endian integers, length-prefixed byte strings and lists.
//!
//! Owns the bytes-level reading and writing of body fields and the field rules both directions
//! share ([`BytesRule`], [`ListRule`]). The [`Reader`] never panics and never reads past its
//! buffer; the [`Writer`] never writes past its buffer but keeps counting, so one pass tells the
//! size a frame needs. It knows nothing about frames or messages.

use crate::error::{FieldError, FieldProblem};
use crate::kind::Kind;
use crate::list::ByteList;

/// What the bytes of a field may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Content {
    /// Anything.
    Any,
    /// UTF-8 text.
    Utf8,
    /// UTF-8 text without NUL (user and group names, so a C agent can pass them on).
    Utf8NoNul,
    /// Anything but NUL (paths and argv entries, so a C agent can pass them on).
    NoNul,
    /// `KEY=VALUE` without NUL, the key non-empty (environment entries).
    KeyValue,
}

/// The rule for one length-prefixed byte-string field.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BytesRule {
    /// Field name, as in the wire-format documentation.
    pub field: &'static str,
    /// Shortest allowed length.
    pub min: usize,
    /// Longest allowed length.
    pub max: usize,
    /// What the bytes may contain.
    pub content: Content,
}

/// The rule for one list-of-byte-strings field.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListRule {
    /// Fewest entries.
    pub min: usize,
    /// Most entries.
    pub max: usize,
    /// The rule each entry follows (its field name names the list).
    pub item: BytesRule,
}

impl BytesRule {
    /// Checks `bytes` against the rule.
    pub(crate) fn check(&self, kind: Kind, bytes: &[u8]) -> Result<(), FieldError> {
        let err = |problem| FieldError {
            kind,
            field: self.field,
            problem,
        };
        let len = bytes.len();
        if len > self.max {
            return Err(err(FieldProblem::TooLong { len, max: self.max }));
        }
        if len < self.min {
            return Err(err(FieldProblem::TooShort { len, min: self.min }));
        }
        match self.content {
            Content::Any => {}
            Content::Utf8 => {
                if core::str::from_utf8(bytes).is_err() {
                    return Err(err(FieldProblem::InvalidUtf8));
                }
            }
            Content::NoNul => {
                if bytes.contains(&0) {
                    return Err(err(FieldProblem::ContainsNul));
                }
            }
            Content::Utf8NoNul => {
                if core::str::from_utf8(bytes).is_err() {
                    return Err(err(FieldProblem::InvalidUtf8));
                }
                if bytes.contains(&0) {
                    return Err(err(FieldProblem::ContainsNul));
                }
            }
            Content::KeyValue => {
                if bytes.contains(&0) {
                    return Err(err(FieldProblem::ContainsNul));
                }
                match bytes.iter().position(|b| *b == b'=') {
                    Some(eq) if eq > 0 => {}
                    _ => return Err(err(FieldProblem::NotKeyValue)),
                }
            }
        }
        Ok(())
    }
}

/// Writes fields into a caller's buffer; past the buffer's end it only counts.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
    kind: Kind,
}

impl<'b> Writer<'b> {
    /// A writer at offset `pos` of `buf`, for a body of message `kind`.
    pub(crate) fn new(buf: &'b mut [u8], pos: usize, kind: Kind) -> Self {
        Writer { buf, pos, kind }
    }

    /// Bytes written (or that would have been written) so far, counting from offset 0.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    pub(crate) fn i32(&mut self, v: i32) {
        self.put(&v.to_le_bytes());
    }

    /// A boolean: one byte, 0 or 1.
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// A fixed-size field (no length prefix).
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.put(bytes);
    }

    /// A number that must lie in `range`, as a u32.
    pub(crate) fn u32_in(
        &mut self,
        field: &'static str,
        v: u32,
        range: core::ops::RangeInclusive<u32>,
    ) -> Result<(), FieldError> {
        check_range(self.kind, field, u64::from(v), range)?;
        self.u32(v);
        Ok(())
    }

    fn len_prefix(&mut self, field: &'static str, len: usize) -> Result<(), FieldError> {
        let len = u32::try_from(len).map_err(|_| FieldError {
            kind: self.kind,
            field,
            problem: FieldProblem::TooLong {
                len,
                max: u32::MAX as usize,
            },
        })?;
        self.u32(len);
        Ok(())
    }

    /// A length-prefixed byte string following `rule`.
    pub(crate) fn bytes(&mut self, rule: &BytesRule, bytes: &[u8]) -> Result<(), FieldError> {
        rule.check(self.kind, bytes)?;
        self.len_prefix(rule.field, bytes.len())?;
        self.put(bytes);
        Ok(())
    }

    /// A counted list of length-prefixed byte strings following `rule`.
    pub(crate) fn list(&mut self, rule: &ListRule, list: &ByteList<'_>) -> Result<(), FieldError> {
        let count = list.len();
        let err = |problem| FieldError {
            kind: self.kind,
            field: rule.item.field,
            problem,
        };
        if count > rule.max {
            return Err(err(FieldProblem::TooMany {
                count,
                max: rule.max,
            }));
        }
        if count < rule.min {
            return Err(err(FieldProblem::TooFew {
                count,
                min: rule.min,
            }));
        }
        self.len_prefix(rule.item.field, count)?;
        for item in list.iter() {
            self.bytes(&rule.item, item)?;
        }
        Ok(())
    }
}

/// Reads fields from a body; every read is bounds-checked and fails with a [`FieldError`].
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: Kind,
}

impl<'a> Reader<'a> {
    /// A reader over the body `buf` of message `kind`.
    pub(crate) fn new(buf: &'a [u8], kind: Kind) -> Self {
        Reader { buf, pos: 0, kind }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], FieldError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(FieldError {
                kind: self.kind,
                field,
                problem: FieldProblem::Truncated,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FieldError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, FieldError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, FieldError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FieldError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, FieldError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, FieldError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    /// A boolean: one byte, 0 or 1 (anything else is out of range).
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, FieldError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(FieldError {
                kind: self.kind,
                field,
                problem: FieldProblem::OutOfRange {
                    value: u64::from(value),
                },
            }),
        }
    }

    /// Where the next field starts (offset into the body).
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The body bytes from `start` up to the next field.
    pub(crate) fn since(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or_default()
    }

    /// A fixed-size field (no length prefix).
    pub(crate) fn fixed<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], FieldError> {
        self.array(field)
    }

    /// A u32 that must lie in `range`.
    pub(crate) fn u32_in(
        &mut self,
        field: &'static str,
        range: core::ops::RangeInclusive<u32>,
    ) -> Result<u32, FieldError> {
        let v = self.u32(field)?;
        check_range(self.kind, field, u64::from(v), range)?;
        Ok(v)
    }

    /// A length-prefixed byte string following `rule`, borrowed from the frame.
    pub(crate) fn bytes(&mut self, rule: &BytesRule) -> Result<&'a [u8], FieldError> {
        let len = self.u32(rule.field)? as usize;
        if len > rule.max {
            // Rejected before looking at the bytes: a huge length never walks the buffer.
            return Err(FieldError {
                kind: self.kind,
                field: rule.field,
                problem: FieldProblem::TooLong { len, max: rule.max },
            });
        }
        let bytes = self.take(rule.field, len)?;
        rule.check(self.kind, bytes)?;
        Ok(bytes)
    }

    /// A length-prefixed UTF-8 string following `rule` (whose content must be `Utf8`).
    pub(crate) fn text(&mut self, rule: &BytesRule) -> Result<&'a str, FieldError> {
        let bytes = self.bytes(rule)?;
        core::str::from_utf8(bytes).map_err(|_| FieldError {
            kind: self.kind,
            field: rule.field,
            problem: FieldProblem::InvalidUtf8,
        })
    }

    /// A counted list following `rule`, borrowed from the frame (validated entry by entry).
    pub(crate) fn list(&mut self, rule: &ListRule) -> Result<ByteList<'a>, FieldError> {
        let count = self.u32(rule.item.field)? as usize;
        let err = |problem| FieldError {
            kind: self.kind,
            field: rule.item.field,
            problem,
        };
        if count > rule.max {
            return Err(err(FieldProblem::TooMany {
                count,
                max: rule.max,
            }));
        }
        if count < rule.min {
            return Err(err(FieldProblem::TooFew {
                count,
                min: rule.min,
            }));
        }
        let start = self.pos;
        for _ in 0..count {
            self.bytes(&rule.item)?;
        }
        Ok(ByteList::from_wire(self.since(start), count))
    }
}

fn check_range(
    kind: Kind,
    field: &'static str,
    v: u64,
    range: core::ops::RangeInclusive<u32>,
) -> Result<(), FieldError> {
    if v < u64::from(*range.start()) || v > u64::from(*range.end()) {
        return Err(FieldError {
            kind,
            field,
            problem: FieldProblem::OutOfRange { value: v },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: BytesRule = BytesRule {
        field: "name",
        min: 1,
        max: 8,
        content: Content::NoNul,
    };

    #[test]
    fn writer_counts_past_the_end_without_writing() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf, 0, Kind::Ping);
        w.u64(0x0102_0304_0506_0708);
        w.u8(9);
        assert_eq!(w.pos(), 9);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn reader_rejects_huge_lengths_before_reading() {
        let mut body = u32::MAX.to_le_bytes().to_vec();
        body.extend_from_slice(b"abc");
        let mut r = Reader::new(&body, Kind::Ping);
        let e = r.bytes(&NAME).unwrap_err();
        assert!(matches!(e.problem, FieldProblem::TooLong { .. }));
    }

    #[test]
    fn rules_check_content() {
        let env = BytesRule {
            field: "env",
            min: 0,
            max: 16,
            content: Content::KeyValue,
        };
        assert!(env.check(Kind::Exec, b"A=1").is_ok());
        assert!(env.check(Kind::Exec, b"A=").is_ok());
        assert_eq!(
            env.check(Kind::Exec, b"=1").unwrap_err().problem,
            FieldProblem::NotKeyValue
        );
        assert_eq!(
            env.check(Kind::Exec, b"A\0=1").unwrap_err().problem,
            FieldProblem::ContainsNul
        );
        assert_eq!(
            NAME.check(Kind::Exec, b"").unwrap_err().problem,
            FieldProblem::TooShort { len: 0, min: 1 }
        );
    }

    #[test]
    fn booleans_are_zero_or_one() {
        let mut r = Reader::new(&[0, 1, 2], Kind::Remove);
        assert_eq!(r.bool("recursive"), Ok(false));
        assert_eq!(r.bool("recursive"), Ok(true));
        assert_eq!(
            r.bool("recursive").unwrap_err().problem,
            FieldProblem::OutOfRange { value: 2 }
        );
        let user = BytesRule {
            field: "user",
            min: 0,
            max: 8,
            content: Content::Utf8NoNul,
        };
        assert!(user.check(Kind::ExecIn, "usér".as_bytes()).is_ok());
        assert_eq!(
            user.check(Kind::ExecIn, b"a\0").unwrap_err().problem,
            FieldProblem::ContainsNul
        );
        assert_eq!(
            user.check(Kind::ExecIn, &[0xff]).unwrap_err().problem,
            FieldProblem::InvalidUtf8
        );
    }

    #[test]
    fn truncated_integer_is_an_error() {
        let mut r = Reader::new(&[1, 2, 3], Kind::Health);
        assert_eq!(r.u32("x").unwrap_err().problem, FieldProblem::Truncated);
    }
}
