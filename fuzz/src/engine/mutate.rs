//! Mutations, AFL's havoc stage in spirit: a stack of 1 to 16 random edits per child, each one
//! of bit and byte flips, interesting integers (8/16/32/64-bit, both byte orders), small
//! arithmetic, random or repeated bytes inserted, ranges deleted, copied or duplicated, a splice
//! with another corpus entry, dictionary tokens inserted or overwritten, and input-to-state
//! replacements from the comparisons the parent's execution made (see [`super::sancov`]).

/// A small, fast PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (a zero seed is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

const INTERESTING_8: [u8; 9] = [0, 1, 0x7f, 0x80, 0xff, 16, 32, 64, 100];
const INTERESTING_16: [u16; 10] = [0, 1, 0x7fff, 0x8000, 0xffff, 128, 255, 256, 1024, 4096];
const INTERESTING_32: [u32; 11] = [
    0,
    1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000,
    65535,
    4096,
    0x10_0000,
    0x4000_0000,
    512,
];
const INTERESTING_64: [u64; 6] = [
    0,
    1,
    u64::MAX,
    i64::MAX as u64,
    0x1_0000_0000,
    0xffff_ffff_0000_0000,
];

/// What a mutation may draw on besides the input itself.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// Dictionary tokens.
    pub dict: &'a [Vec<u8>],
    /// Another corpus entry (for splicing).
    pub other: Option<&'a [u8]>,
    /// Comparison operands `(a, b, width)` from the parent's execution.
    pub cmps: &'a [(u64, u64, u8)],
}

/// Applies a stack of random mutations to `data`, keeping it at most `max_len` bytes.
pub fn mutate(data: &mut Vec<u8>, max_len: usize, rng: &mut Rng, src: &Sources<'_>) {
    let rounds = 1 << rng.below(5);
    for _ in 0..rounds {
        mutate_once(data, max_len, rng, src);
    }
    data.truncate(max_len);
}

fn put_int(data: &mut [u8], at: usize, v: u64, width: usize, big_endian: bool) {
    let bytes = if big_endian {
        v.to_be_bytes()[8 - width..].to_vec()
    } else {
        v.to_le_bytes()[..width].to_vec()
    };
    data[at..at + width].copy_from_slice(&bytes);
}

fn mutate_once(data: &mut Vec<u8>, max_len: usize, rng: &mut Rng, src: &Sources<'_>) {
    if data.is_empty() {
        let n = 1 + rng.below(16);
        data.extend((0..n).map(|_| rng.next_u64() as u8));
        return;
    }
    let len = data.len();
    match rng.below(17) {
        0 => {
            let bit = rng.below(len * 8);
            data[bit / 8] ^= 1 << (bit % 8);
        }
        1 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        2 => {
            let i = rng.below(len);
            data[i] = INTERESTING_8[rng.below(INTERESTING_8.len())];
        }
        3 | 4 => {
            let width = [2usize, 4, 8][rng.below(3)];
            if len >= width {
                let at = rng.below(len - width + 1);
                let v = match width {
                    2 => u64::from(INTERESTING_16[rng.below(INTERESTING_16.len())]),
                    4 => u64::from(INTERESTING_32[rng.below(INTERESTING_32.len())]),
                    _ => INTERESTING_64[rng.below(INTERESTING_64.len())],
                };
                put_int(data, at, v, width, rng.one_in(4));
            }
        }
        5 => {
            // Small arithmetic on a 1/2/4-byte little-endian integer.
            let width = [1usize, 2, 4][rng.below(3)];
            if len >= width {
                let at = rng.below(len - width + 1);
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(&data[at..at + width]);
                let delta = 1 + rng.below(35) as u64;
                let v = u64::from_le_bytes(b);
                let v = if rng.one_in(2) {
                    v.wrapping_add(delta)
                } else {
                    v.wrapping_sub(delta)
                };
                put_int(data, at, v, width, false);
            }
        }
        6 => {
            // Insert random bytes.
            if len < max_len {
                let n = (1 + rng.below(16)).min(max_len - len);
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
        }
        7 => {
            // Insert a run of one byte.
            if len < max_len {
                let n = (1 + rng.below(64)).min(max_len - len);
                let at = rng.below(len + 1);
                let b = if rng.one_in(2) {
                    data[rng.below(len)]
                } else {
                    rng.next_u64() as u8
                };
                data.splice(at..at, std::iter::repeat_n(b, n));
            }
        }
        8 | 9 => {
            // Delete a range.
            if len > 1 {
                let n = 1 + rng.below((len / 2).clamp(1, 64));
                let at = rng.below(len - n + 1);
                data.drain(at..at + n);
            }
        }
        10 => {
            // Copy a range over another place.
            let n = 1 + rng.below(len.min(64));
            let from = rng.below(len - n + 1);
            let to = rng.below(len - n + 1);
            data.copy_within(from..from + n, to);
        }
        11 => {
            // Duplicate a range.
            if len < max_len {
                let n = (1 + rng.below(len.min(64))).min(max_len - len);
                let from = rng.below(len - n + 1);
                let at = rng.below(len + 1);
                let chunk = data[from..from + n].to_vec();
                data.splice(at..at, chunk);
            }
        }
        12 => {
            // Splice: our head, the other's tail.
            if let Some(other) = src.other.filter(|o| !o.is_empty()) {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
        }
        13 | 14 => {
            // A dictionary token, inserted or written over.
            if !src.dict.is_empty() {
                let tok = &src.dict[rng.below(src.dict.len())];
                if rng.one_in(2) && len >= tok.len() {
                    let at = rng.below(len - tok.len() + 1);
                    data[at..at + tok.len()].copy_from_slice(tok);
                } else if len + tok.len() <= max_len {
                    let at = rng.below(len + 1);
                    data.splice(at..at, tok.iter().copied());
                }
            }
        }
        15 | 16 => input_to_state(data, rng, src),
        _ => unreachable!(),
    }
}

/// Finds one operand of a recorded comparison in the input (little or big endian) and
/// writes the other operand in its place.
fn input_to_state(data: &mut [u8], rng: &mut Rng, src: &Sources<'_>) {
    if src.cmps.is_empty() {
        return;
    }
    for _ in 0..4 {
        let (a, b, width) = src.cmps[rng.below(src.cmps.len())];
        let width = usize::from(width).clamp(1, 8);
        if data.len() < width {
            continue;
        }
        let (from, to) = if rng.one_in(2) { (a, b) } else { (b, a) };
        for big in [false, true] {
            let pat = if big {
                from.to_be_bytes()[8 - width..].to_vec()
            } else {
                from.to_le_bytes()[..width].to_vec()
            };
            let start = rng.below(data.len());
            let positions = data.len() - width + 1;
            for k in 0..positions {
                let at = (start + k) % positions;
                if data[at..at + width] == pat[..] {
                    put_int(data, at, to, width, big);
                    return;
                }
            }
        }
    }
}

/// Parses an AFL/libFuzzer dictionary: one token per line, `name="value"` or `"value"`, with
/// `\\`, `\"` and `\xNN` escapes; `#` starts a comment.
pub fn parse_dict(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (Some(open), Some(close)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if close <= open {
            continue;
        }
        let body = &line.as_bytes()[open + 1..close];
        let mut tok = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'\\' && i + 1 < body.len() {
                if body[i + 1] == b'x' && i + 3 < body.len() {
                    let hex = std::str::from_utf8(&body[i + 2..i + 4]).unwrap_or("");
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        tok.push(b);
                        i += 4;
                        continue;
                    }
                }
                tok.push(body[i + 1]);
                i += 2;
            } else {
                tok.push(body[i]);
                i += 1;
            }
        }
        if !tok.is_empty() {
            out.push(tok);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_parse_with_escapes() {
        let d = parse_dict("# c\nkw=\"GET \"\n\"\\x00\\x01\\\"\"\n\n");
        assert_eq!(d, vec![b"GET ".to_vec(), vec![0, 1, b'"']]);
    }

    #[test]
    fn mutation_respects_the_length_limit() {
        let mut rng = Rng::new(7);
        let dict = vec![b"0123456789".to_vec()];
        let cmps = vec![(0x41, 0x4242, 2)];
        for _ in 0..2000 {
            let mut d = b"AAAA".to_vec();
            let src = Sources {
                dict: &dict,
                other: Some(b"zzzzzzzz"),
                cmps: &cmps,
            };
            mutate(&mut d, 32, &mut rng, &src);
            assert!(d.len() <= 32);
        }
    }
}
