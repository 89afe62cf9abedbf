//! Token secrets: `<prefix>_<random><checksum>`.
//!
//! The random part is 256 bits from the OS CSPRNG in base62 (43 characters); the checksum is
//! the CRC32 of everything before it, in base62 (6 characters), as GitHub's tokens do. The
//! checksum lets Verify reject mistyped and made-up tokens without touching the store, and
//! lets secret scanners recognise ours. Only the SHA-256 of a secret is ever stored.

use std::fmt;

use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "ta";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_BYTES: usize = 32;
/// 62^43 > 2^256, so 43 base62 digits hold any 256-bit value.
const RANDOM_LEN: usize = 43;
/// 62^6 > 2^32.
const CHECKSUM_LEN: usize = 6;
/// The longest prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// How many characters follow the prefix's `_`: the random part and the checksum.
pub const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// How many characters of the random part the display hint shows.
const HINT_LEN: usize = 6;

/// The prefix that starts every secret we issue: 1 to 16 lowercase letters and digits,
/// starting with a letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPrefix(String);

impl TokenPrefix {
    /// Parses a prefix, returning why it is not acceptable.
    pub fn parse(value: &str) -> Result<Self, String> {
        if is_valid_prefix(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(format!(
                "must be 1 to {MAX_PREFIX_LEN} lowercase letters or digits, starting with a letter"
            ))
        }
    }

    /// Returns the prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TokenPrefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

/// Which bytes a secret's body may hold: ASCII letters and digits. A table without
/// branches, since every Verify checks every byte.
const ALPHANUMERIC: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    table
};

fn is_valid_prefix(value: &str) -> bool {
    is_valid_prefix_bytes(value.as_bytes())
}

fn is_valid_prefix_bytes(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_PREFIX_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Why a string is not one of our secrets. Carries no part of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedSecret {
    /// The string does not have the shape of a secret.
    #[error("not a token of this service")]
    Shape,
    /// The shape is right but the checksum does not match, e.g. a mistyped token.
    #[error("token checksum does not match")]
    Checksum,
}

/// A plaintext token secret. Its `Debug` output is redacted; the text is reachable only
/// through [`TokenSecret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// Generates a fresh secret from the OS CSPRNG.
    pub fn generate(prefix: &TokenPrefix) -> Self {
        let mut random = [0u8; RANDOM_BYTES];
        OsRng
            .try_fill_bytes(&mut random)
            .expect("the operating system's random number generator failed");
        let mut text = String::with_capacity(prefix.0.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
        text.push_str(&prefix.0);
        text.push('_');
        text.push_str(&encode_base62(&random, RANDOM_LEN));
        let checksum = crc32fast::hash(text.as_bytes());
        text.push_str(&encode_base62(&checksum.to_be_bytes(), CHECKSUM_LEN));
        Self(text)
    }

    /// Parses a presented secret, checking its shape and checksum.
    ///
    /// Any well-formed prefix is accepted, so that tokens issued before a change of the
    /// configured prefix keep working.
    pub fn parse(value: &str) -> Result<Self, MalformedSecret> {
        check(value)?;
        Ok(Self(value.to_owned()))
    }

    /// Checks a presented secret's shape and checksum and returns its hash, without
    /// copying it: the Verify hot path.
    pub fn hash_of_presented(value: &str) -> Result<SecretHash, MalformedSecret> {
        check(value)?;
        Ok(SecretHash(Sha256::digest(value.as_bytes()).into()))
    }

    /// Returns whether `candidate` is exactly one of our secrets (shape and checksum),
    /// allocating nothing: for scanners, which see bytes rather than strings.
    pub fn is_valid(candidate: &[u8]) -> bool {
        check_bytes(candidate).is_ok()
    }

    /// Returns the plaintext, for the one place it is shown: the CreateToken response.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the SHA-256 of the secret, the only form in which it is stored.
    pub fn hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// Returns the prefix and the first characters of the random part, e.g. `ta_4kQz9w`.
    pub fn display_hint(&self) -> String {
        let prefix_len = self.0.find('_').map_or(0, |i| i + 1);
        self.0[..prefix_len + HINT_LEN].to_owned()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// The SHA-256 of a secret: how tokens are stored and looked up.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Returns the hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but a short form is enough to tell two apart.
        write!(
            f,
            "SecretHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Whether `text` holds something shaped like a secret's body: an `_` followed by at least
/// [`BODY_LEN`] ASCII letters and digits, whatever stands before or after it and whether or
/// not a checksum holds. Stricter than the leak scanner, which wants a whole, valid secret
/// between word boundaries: for text the service keeps and repeats (a caller's request id),
/// where `req_<secret>`, `<secret>_2` or a secret with one character changed are as bad to
/// log as the secret itself.
pub fn may_hold_secret(text: &[u8]) -> bool {
    let mut run: Option<usize> = None;
    for &byte in text {
        run = match (byte, run) {
            (b'_', _) => Some(0),
            (byte, Some(n)) if byte.is_ascii_alphanumeric() => Some(n + 1),
            _ => None,
        };
        if run >= Some(BODY_LEN) {
            return true;
        }
    }
    false
}

/// Checks a secret's shape and checksum, allocating nothing.
fn check(value: &str) -> Result<(), MalformedSecret> {
    check_bytes(value.as_bytes())
}

/// [`check`] on bytes: the shape is all ASCII, so any other byte fails it.
fn check_bytes(value: &[u8]) -> Result<(), MalformedSecret> {
    let underscore = value
        .iter()
        .position(|&b| b == b'_')
        .ok_or(MalformedSecret::Shape)?;
    let (prefix, body) = (&value[..underscore], &value[underscore + 1..]);
    if !is_valid_prefix_bytes(prefix)
        || body.len() != BODY_LEN
        || !body
            .iter()
            .fold(true, |ok, &b| ok & ALPHANUMERIC[usize::from(b)])
    {
        return Err(MalformedSecret::Shape);
    }
    let (signed, checksum) = value.split_at(value.len() - CHECKSUM_LEN);
    if checksum != checksum_digits(crc32fast::hash(signed)) {
        return Err(MalformedSecret::Checksum);
    }
    Ok(())
}

/// The CRC32 in exactly six base62 digits.
fn checksum_digits(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    digits
}

/// Encodes a big-endian number in exactly `width` base62 digits (the caller picks a width
/// large enough for any value of that many bytes).
fn encode_base62(bytes: &[u8], width: usize) -> String {
    let mut number: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
    let mut digits = vec![b'0'; width];
    for digit in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for limb in number.iter_mut() {
            let acc = remainder * 256 + *limb;
            *limb = acc / 62;
            remainder = acc % 62;
        }
        *digit = ALPHABET[remainder as usize];
    }
    debug_assert!(number.iter().all(|&limb| limb == 0), "width too small");
    String::from_utf8(digits).expect("base62 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_has_the_documented_shape() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let text = secret.expose();
        assert!(text.starts_with("ta_"));
        assert_eq!(text.len(), 3 + RANDOM_LEN + CHECKSUM_LEN);
        assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(TokenSecret::parse(text), Ok(secret));
    }

    #[test]
    fn generated_secrets_differ() {
        let prefix = TokenPrefix::default();
        let a = TokenSecret::generate(&prefix);
        let b = TokenSecret::generate(&prefix);
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn a_mistyped_character_fails_the_checksum() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let mut bytes = secret.expose().as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(TokenSecret::parse(&typo), Err(MalformedSecret::Checksum));
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let valid = TokenSecret::generate(&TokenPrefix::default());
        let text = valid.expose();
        for bad in [
            "",
            "ta_",
            "nounderscore",
            &text[..text.len() - 1],
            &format!("{text}x"),
            &text.replace("ta_", "TA_"),
            &text.replace("ta_", "_"),
            &text.replace("ta_", "ta-"),
            &format!("{}!{}", &text[..10], &text[11..]),
            "ta_ééééééééééééééééééééééééééééééééééééééééééééééééé",
        ] {
            assert_eq!(
                TokenSecret::parse(bad),
                Err(MalformedSecret::Shape),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_byte_but_letters_and_digits_is_refused_in_the_body() {
        let text = TokenSecret::generate(&TokenPrefix::default())
            .expose()
            .to_owned();
        for byte in 0..=255u8 {
            for position in [3, 20, text.len() - 1] {
                let mut candidate = text.clone().into_bytes();
                candidate[position] = byte;
                let shaped = check_bytes(&candidate) != Err(MalformedSecret::Shape);
                assert_eq!(shaped, byte.is_ascii_alphanumeric(), "{byte} at {position}");
            }
        }
    }

    #[test]
    fn bytes_are_checked_like_strings() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let text = secret.expose().as_bytes();
        assert!(TokenSecret::is_valid(text));
        let mut typo = text.to_vec();
        typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
        assert!(!TokenSecret::is_valid(&typo));
        let mut not_utf8 = text.to_vec();
        not_utf8[5] = 0xff;
        assert!(!TokenSecret::is_valid(&not_utf8));
        assert!(!TokenSecret::is_valid(&text[..text.len() - 1]));
        assert!(!TokenSecret::is_valid(b""));
    }

    #[test]
    fn secrets_with_another_prefix_still_parse() {
        let secret = TokenSecret::generate(&TokenPrefix::parse("acme2").unwrap());
        assert!(secret.expose().starts_with("acme2_"));
        assert!(TokenSecret::parse(secret.expose()).is_ok());
    }

    #[test]
    fn prefix_grammar_is_enforced() {
        for bad in ["", "Ta", "1ta", "t_a", "t-a", "abcdefghijklmnopq"] {
            assert!(TokenPrefix::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["t", "ta", "acme2", "abcdefghijklmnop"] {
            assert!(TokenPrefix::parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let printed = format!("{secret:?} {:?}", secret.hash());
        assert!(!printed.contains(&secret.expose()[3..12]));
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn display_hint_is_prefix_and_first_characters() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let hint = secret.display_hint();
        assert_eq!(hint.len(), 3 + HINT_LEN);
        assert!(secret.expose().starts_with(&hint));
    }

    #[test]
    fn base62_encodes_extremes_in_fixed_width() {
        assert_eq!(encode_base62(&[0; 32], RANDOM_LEN), "0".repeat(RANDOM_LEN));
        let max = encode_base62(&[0xff; 32], RANDOM_LEN);
        assert_eq!(max.len(), RANDOM_LEN);
        assert_ne!(max.as_bytes()[0], b'0');
        assert_eq!(
            encode_base62(&u32::MAX.to_be_bytes(), CHECKSUM_LEN),
            "4gfFC3"
        );
        assert_eq!(encode_base62(&61u32.to_be_bytes(), CHECKSUM_LEN), "00000z");
    }

    #[test]
    fn checksum_digits_match_the_general_encoding() {
        for crc in [0, 1, 61, 62, 3843, 1_000_000, u32::MAX - 1, u32::MAX] {
            let general = encode_base62(&crc.to_be_bytes(), CHECKSUM_LEN);
            assert_eq!(checksum_digits(crc), general.as_bytes(), "{crc}");
        }
    }

    #[test]
    fn hashing_a_presented_secret_checks_it_first() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        assert_eq!(
            TokenSecret::hash_of_presented(secret.expose()),
            Ok(secret.hash())
        );
        assert_eq!(
            TokenSecret::hash_of_presented("ta_nope"),
            Err(MalformedSecret::Shape)
        );
    }

    #[test]
    fn hash_is_sha256_of_the_whole_secret() {
        let secret =
            TokenSecret::parse(TokenSecret::generate(&TokenPrefix::default()).expose()).unwrap();
        let expected: [u8; 32] = Sha256::digest(secret.expose().as_bytes()).into();
        assert_eq!(secret.hash().0, expected);
    }
}
