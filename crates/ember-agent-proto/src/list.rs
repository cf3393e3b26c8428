//! [`ByteList`]: a list of byte strings (argv, environment) without allocation.
//!
//! Owns the one list type used by both directions: a decoded list borrows the frame bytes it was
//! validated from; a list to encode borrows the caller's slice of `&[u8]` or `&str`. It does not
//! validate entries (the codec's rules do).

use core::fmt;

/// A list of byte strings, borrowed either from a decoded frame or from the caller.
#[derive(Clone, Copy)]
pub struct ByteList<'a> {
    repr: Repr<'a>,
}

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// `count` entries, each `u32 LE length | bytes`, already validated.
    Wire {
        raw: &'a [u8],
        count: usize,
    },
    Bytes(&'a [&'a [u8]]),
    Strs(&'a [&'a str]),
}

impl<'a> ByteList<'a> {
    /// The empty list.
    pub const EMPTY: ByteList<'static> = ByteList {
        repr: Repr::Bytes(&[]),
    };

    /// A list over byte strings.
    pub const fn from_bytes(items: &'a [&'a [u8]]) -> Self {
        ByteList {
            repr: Repr::Bytes(items),
        }
    }

    /// A list over strings.
    pub const fn from_strs(items: &'a [&'a str]) -> Self {
        ByteList {
            repr: Repr::Strs(items),
        }
    }

    /// A list over validated wire bytes (`count` length-prefixed entries).
    pub(crate) const fn from_wire(raw: &'a [u8], count: usize) -> Self {
        ByteList {
            repr: Repr::Wire { raw, count },
        }
    }

    /// Number of entries.
    pub const fn len(&self) -> usize {
        match self.repr {
            Repr::Wire { count, .. } => count,
            Repr::Bytes(items) => items.len(),
            Repr::Strs(items) => items.len(),
        }
    }

    /// Whether the list has no entries.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            repr: self.repr,
            index: 0,
            offset: 0,
        }
    }

    /// The entry at `index`, if any (linear time for decoded lists).
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.iter().nth(index)
    }
}

impl PartialEq for ByteList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ByteList<'_> {}

impl fmt::Debug for ByteList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|item| item.escape_ascii()))
            .finish()
    }
}

impl Default for ByteList<'_> {
    fn default() -> Self {
        ByteList::EMPTY
    }
}

impl<'a> IntoIterator for ByteList<'a> {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over a [`ByteList`]'s entries.
#[derive(Clone)]
pub struct Iter<'a> {
    repr: Repr<'a>,
    index: usize,
    offset: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let item = match self.repr {
            Repr::Bytes(items) => *items.get(self.index)?,
            Repr::Strs(items) => items.get(self.index)?.as_bytes(),
            Repr::Wire { raw, count } => {
                if self.index >= count {
                    return None;
                }
                // Validated at decode time; a short read here only ends the iteration.
                let len_end = self.offset.checked_add(4)?;
                let len_bytes: [u8; 4] = raw.get(self.offset..len_end)?.try_into().ok()?;
                let len = u32::from_le_bytes(len_bytes) as usize;
                let end = len_end.checked_add(len)?;
                let item = raw.get(len_end..end)?;
                self.offset = end;
                item
            }
        };
        self.index += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let total = match self.repr {
            Repr::Wire { count, .. } => count,
            Repr::Bytes(items) => items.len(),
            Repr::Strs(items) => items.len(),
        };
        let left = total.saturating_sub(self.index);
        (0, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representations_compare_by_content() {
        let wire = [1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c'];
        let decoded = ByteList::from_wire(&wire, 2);
        assert_eq!(decoded, ByteList::from_strs(&["a", "bc"]));
        assert_eq!(decoded, ByteList::from_bytes(&[b"a", b"bc"]));
        assert_ne!(decoded, ByteList::from_strs(&["a"]));
        assert_eq!(decoded.get(1), Some(&b"bc"[..]));
        assert_eq!(decoded.get(2), None);
    }

    #[test]
    fn inconsistent_wire_bytes_end_iteration() {
        let wire = [9, 0, 0, 0, b'a'];
        assert_eq!(ByteList::from_wire(&wire, 1).iter().count(), 0);
    }
}
