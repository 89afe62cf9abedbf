//! Finds our secrets in bytes, offline: the core of `token-authority scan`.
//!
//! A candidate is what the regular expression [`PATTERN`] matches: a well-formed prefix,
//! `_`, 49 base62 characters, with no word character (`[A-Za-z0-9_]`) on either side. Only
//! candidates whose checksum matches are reported, so lookalikes are not. The finder jumps
//! from `_` to `_` with memchr and looks at the bytes around each, most of which (snake_case
//! words) fail on the first byte or two.

pub mod report;
pub mod run;
pub mod walk;

use std::io::{self, Read};

use memchr::memchr_iter;

use crate::domain::secret::{BODY_LEN, MAX_PREFIX_LEN, TokenSecret};

/// The regular expression of a candidate secret (POSIX ERE with GNU `\b`, as `grep -E`
/// takes it). The scanner finds the same candidates and keeps those whose checksum matches.
pub const PATTERN: &str = r"\b[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{49}\b";

/// A secret found, at a place in the input. Its `Debug` shows the secret redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The offset of the secret's first byte in the input.
    pub offset: u64,
    /// The line it is on, counting from 1.
    pub line: u64,
    /// The secret, for reporting it; print [`Finding::hint`] instead.
    pub secret: TokenSecret,
}

impl Finding {
    /// Returns the prefix and first characters of the secret, e.g. `ta_4kQz9w`.
    pub fn hint(&self) -> String {
        self.secret.display_hint()
    }
}

/// Returns every secret in `buf`, in order.
pub fn find_secrets(buf: &[u8]) -> Vec<Finding> {
    let mut lines = LineCounter::default();
    let mut findings = Vec::new();
    find_between(buf, 0, buf.len(), |start, end| {
        findings.extend(lines.finding(buf, 0, start, end));
    });
    findings
}

/// How much a read adds to the buffer at a time in [`scan_reader`].
pub const CHUNK: usize = 1 << 20;

/// Reads `reader` to its end through `buf` (scratch space, reused across calls), `chunk`
/// bytes at a time, and returns the secrets in it and how many bytes it had. Memory stays
/// bounded whatever the input's size; a secret across two reads is found like any other.
pub fn scan_reader(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    chunk: usize,
) -> io::Result<(Vec<Finding>, u64)> {
    let chunk = chunk.max(1);
    // Sized once and never shrunk, so that no read pays for zeroing it again.
    let capacity = LOOK_BEHIND + LOOK_AHEAD + chunk;
    if buf.len() < capacity {
        buf.resize(capacity, 0);
    }
    // The stream offset of buf[0], where in buf the `_` not yet looked at start, and how
    // much of buf holds input.
    let (mut base, mut from, mut len) = (0u64, 0usize, 0usize);
    let mut lines = LineCounter::default();
    let mut findings = Vec::new();
    loop {
        let at_end = fill(reader, &mut buf[..from + LOOK_AHEAD + chunk], &mut len)?;
        let view = &buf[..len];
        // Short of the end, a `_` is looked at once the bytes after it are in.
        let to = if at_end { len } else { from + chunk };
        find_between(view, from, to, |start, end| {
            findings.extend(lines.finding(view, base, start, end));
        });
        if at_end {
            return Ok((findings, base + len as u64));
        }
        // Keep the bytes that a prefix before the next `_` may start in.
        let keep_from = to.saturating_sub(LOOK_BEHIND);
        lines.count_to(view, base, base + keep_from as u64);
        buf.copy_within(keep_from..len, 0);
        len -= keep_from;
        base += keep_from as u64;
        from = to - keep_from;
    }
}

/// Reads into `buf[*len..]` until it is full or the input ends; returns whether it ended.
fn fill(reader: &mut impl Read, buf: &mut [u8], len: &mut usize) -> io::Result<bool> {
    while *len < buf.len() {
        match reader.read(&mut buf[*len..]) {
            Ok(0) => return Ok(true),
            Ok(n) => *len += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}

/// The bytes before a `_` that decide its prefix: the longest prefix and one more.
const LOOK_BEHIND: usize = MAX_PREFIX_LEN + 1;
/// The bytes after a `_` that decide a secret: the body and the byte after it.
const LOOK_AHEAD: usize = BODY_LEN + 1;

const WORD: u8 = 1;
const ALNUM: u8 = 2;
const PREFIX: u8 = 4;

/// The classes of each byte value: a word character (`[A-Za-z0-9_]`), a body character
/// (`[A-Za-z0-9]`), a prefix character (`[a-z0-9]`).
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            table[b] |= WORD | ALNUM;
        }
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            table[b] |= PREFIX;
        }
        if c == b'_' {
            table[b] |= WORD;
        }
        b += 1;
    }
    table
};

fn is(byte: u8, class: u8) -> bool {
    CLASSES[byte as usize] & class != 0
}

/// Calls `found(start, end)` for each secret whose `_` is in `buf[from..to]`. The bytes
/// around are read from all of `buf`, whose ends count as delimiters: callers keep
/// [`LOOK_BEHIND`] bytes before `from` and [`LOOK_AHEAD`] after `to` unless at an end.
fn find_between(buf: &[u8], from: usize, to: usize, mut found: impl FnMut(usize, usize)) {
    for underscore in memchr_iter(b'_', &buf[from..to]).map(|i| from + i) {
        if let Some(start) = secret_around(buf, underscore) {
            found(start, underscore + 1 + BODY_LEN);
        }
    }
}

/// Returns where the secret around the `_` at `underscore` starts, if there is one.
fn secret_around(buf: &[u8], underscore: usize) -> Option<usize> {
    // Cheapest tests first: most `_` in text join words, or start or end them.
    if underscore == 0 || !is(buf[underscore - 1], PREFIX) {
        return None;
    }
    let end = underscore + 1 + BODY_LEN;
    let body = buf.get(underscore + 1..end)?;
    if buf.get(end).is_some_and(|&b| is(b, WORD)) || !body.iter().all(|&b| is(b, ALNUM)) {
        return None;
    }
    // The prefix is the whole run of [a-z0-9] before the `_`: `xta_…` is no `ta_…`.
    let lowest = underscore.saturating_sub(LOOK_BEHIND);
    let start = buf[lowest..underscore]
        .iter()
        .rposition(|&b| !is(b, PREFIX))
        .map_or(lowest, |i| lowest + i + 1);
    if underscore - start > MAX_PREFIX_LEN
        || !buf[start].is_ascii_lowercase()
        || (start > 0 && is(buf[start - 1], WORD))
    {
        return None;
    }
    TokenSecret::is_valid(&buf[start..end]).then_some(start)
}

/// Counts lines up to the findings, each newline once, as the input goes by.
#[derive(Default)]
struct LineCounter {
    /// The stream offset counted up to.
    counted: u64,
    newlines: u64,
}

impl LineCounter {
    /// Counts the newlines up to the stream offset `to` (if not yet past it), of `buf`
    /// starting at `base`.
    fn count_to(&mut self, buf: &[u8], base: u64, to: u64) {
        if to <= self.counted {
            return;
        }
        let (from, to_in_buf) = ((self.counted - base) as usize, (to - base) as usize);
        self.newlines += memchr_iter(b'\n', &buf[from..to_in_buf]).count() as u64;
        self.counted = to;
    }

    /// Makes the finding of `buf[start..end]`, for `buf` starting at stream offset `base`.
    fn finding(&mut self, buf: &[u8], base: u64, start: usize, end: usize) -> Option<Finding> {
        let offset = base + start as u64;
        self.count_to(buf, base, offset);
        let text = std::str::from_utf8(&buf[start..end]).ok()?;
        Some(Finding {
            offset,
            line: self.newlines + 1,
            secret: TokenSecret::parse(text).ok()?,
        })
    }
}

#[cfg(test)]
mod tests;
