use proptest::prelude::*;

use super::*;
use crate::domain::secret::TokenPrefix;

fn secret(prefix: &str) -> TokenSecret {
    TokenSecret::generate(&TokenPrefix::parse(prefix).unwrap())
}

fn found(buf: &[u8]) -> Vec<(u64, u64, String)> {
    find_secrets(buf)
        .into_iter()
        .map(|f| (f.offset, f.line, f.secret.expose().to_owned()))
        .collect()
}

/// What the regular expression finds, then checked: every start after a non-word byte,
/// every prefix length. Slow and plain, to hold the fast finder to.
fn reference(buf: &[u8]) -> Vec<(u64, String)> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut all = Vec::new();
    for start in 0..buf.len() {
        if start > 0 && word(buf[start - 1]) {
            continue;
        }
        for prefix in 1..=MAX_PREFIX_LEN {
            let end = start + prefix + 1 + BODY_LEN;
            if end > buf.len() || buf.get(end).is_some_and(|&b| word(b)) {
                continue;
            }
            if TokenSecret::is_valid(&buf[start..end]) {
                let text = String::from_utf8(buf[start..end].to_vec()).unwrap();
                all.push((start as u64, text));
            }
        }
    }
    all
}

#[test]
fn finds_secrets_at_the_start_the_end_and_between_with_their_lines() {
    let (a, b, c) = (secret("ta"), secret("acme2"), secret("t"));
    let text = format!(
        "{}\nlet x = 1;\n\n  key = \"{}\"\r\n{{\"k\":\"{}\"}} tail\n{}",
        a.expose(),
        b.expose(),
        c.expose(),
        a.expose()
    );
    let offset = |s: &TokenSecret, after: usize| text[after..].find(s.expose()).unwrap() + after;
    let last = text.rfind(a.expose()).unwrap();
    assert_eq!(
        found(text.as_bytes()),
        vec![
            (0, 1, a.expose().to_owned()),
            (offset(&b, 0) as u64, 4, b.expose().to_owned()),
            (offset(&c, 0) as u64, 5, c.expose().to_owned()),
            (last as u64, 6, a.expose().to_owned()),
        ]
    );
    assert_eq!(found(a.expose().as_bytes()).len(), 1, "the whole input");
}

#[test]
fn a_secret_glued_to_a_word_character_is_not_found() {
    let s = secret("ta");
    let text = s.expose();
    for glued in [
        format!("x{text}"),
        format!("X{text}"),
        format!("9{text}"),
        format!("_{text}"),
        format!("{text}x"),
        format!("{text}_"),
        format!("{text}0"),
        format!("a_{text}"),
    ] {
        assert_eq!(found(glued.as_bytes()), vec![], "{glued:?}");
    }
    for delimited in [
        format!("-{text}-"),
        format!("'{text}'"),
        format!("Bearer {text}\n"),
        format!("é{text}é"),
        format!("\0{text}\u{ff}"),
        format!("k={text};"),
        format!("/{text}/"),
    ] {
        assert_eq!(found(delimited.as_bytes()).len(), 1, "{delimited:?}");
    }
}

#[test]
fn lookalikes_are_not_found() {
    let text = secret("ta").expose().to_owned();
    let mut lookalikes = vec![
        format!("ta_{}", "A".repeat(49)),
        text.replacen("ta_", "TA_", 1),
        text.replacen("ta_", "ta-", 1),
        text[..text.len() - 1].to_owned(),
        format!("{}{}", &text[..10], &text[11..]),
    ];
    for i in 0..text.len() {
        for other in [b'a', b'Z', b'0', b'_'] {
            let mut bytes = text.clone().into_bytes();
            if bytes[i] != other {
                bytes[i] = other;
                lookalikes.push(String::from_utf8(bytes).unwrap());
            }
        }
    }
    for lookalike in &lookalikes {
        assert_eq!(found(lookalike.as_bytes()), vec![], "{lookalike:?}");
    }
}

#[test]
fn the_prefix_is_the_whole_run_before_the_underscore() {
    let longest = secret("abcdefghijklmnop");
    assert_eq!(found(longest.expose().as_bytes()).len(), 1);
    // A 17-character run is no prefix, and no secret starts inside it.
    let inside = secret("bcdefghijklmnopq");
    assert_eq!(found(format!("a{}", inside.expose()).as_bytes()), vec![]);
    assert_eq!(found(format!("1{}", inside.expose()).as_bytes()), vec![]);
    let short = secret("ta");
    assert_eq!(found(format!("xy{}", short.expose()).as_bytes()), vec![]);
}

#[test]
fn debug_of_a_finding_does_not_show_the_secret() {
    let s = secret("ta");
    let finding = find_secrets(s.expose().as_bytes()).remove(0);
    let printed = format!("{finding:?} {finding:#?}");
    assert!(!printed.contains(&s.expose()[3..]), "{printed}");
    assert_eq!(finding.hint(), s.display_hint());
}

#[test]
fn reading_in_chunks_finds_what_reading_at_once_finds() {
    let s = secret("acme");
    let text = format!("a\nb {} c\n{}\n\n{}", s.expose(), s.expose(), s.expose());
    let whole = find_secrets(text.as_bytes());
    assert_eq!(whole.len(), 3);
    let mut buf = Vec::new();
    for chunk in 1..=text.len() + 1 {
        let (chunked, bytes) = scan_reader(&mut text.as_bytes(), &mut buf, chunk).unwrap();
        assert_eq!(chunked, whole, "chunk {chunk}");
        assert_eq!(bytes, text.len() as u64);
    }
}

#[test]
fn no_input_finds_nothing() {
    assert_eq!(found(b""), vec![]);
    assert_eq!(found(b"_"), vec![]);
    assert_eq!(found(&[b'_'; 100]), vec![]);
    let (findings, bytes) = scan_reader(&mut &b""[..], &mut Vec::new(), CHUNK).unwrap();
    assert_eq!((findings, bytes), (vec![], 0));
}

/// A reader that hands out at most a few bytes at a time, as pipes do.
struct Trickle<'a>(&'a [u8], std::vec::IntoIter<usize>);

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.1.next().unwrap_or(7).min(out.len()).min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Bytes that are mostly the ones that matter around a secret.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    let near = prop::sample::select(b"az09AZ_ \n\"=:".to_vec());
    prop::collection::vec(prop_oneof![4 => near, 1 => any::<u8>()], 0..600)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn planted_secrets_are_found_exactly(
        noise in noise(),
        plants in prop::collection::vec(
            (any::<prop::sample::Index>(), "[a-z][a-z0-9]{0,15}", prop::sample::select(b" \n\"'=:/,\0\xff".to_vec())),
            0..6,
        ),
        chunk in 1usize..200,
        reads in prop::collection::vec(1usize..100, 0..50),
    ) {
        let mut at: Vec<(usize, TokenSecret, u8)> = plants
            .iter()
            .map(|(index, prefix, delimiter)| (index.index(noise.len() + 1), secret(prefix), *delimiter))
            .collect();
        at.sort_by_key(|(position, ..)| *position);
        let (mut buf, mut expected, mut copied) = (Vec::new(), Vec::new(), 0);
        for (position, secret, delimiter) in &at {
            buf.extend_from_slice(&noise[copied..*position]);
            copied = *position;
            buf.push(*delimiter);
            expected.push((buf.len() as u64, secret.expose().to_owned()));
            buf.extend_from_slice(secret.expose().as_bytes());
            buf.push(*delimiter);
        }
        buf.extend_from_slice(&noise[copied..]);

        let whole = find_secrets(&buf);
        let offsets: Vec<(u64, String)> =
            whole.iter().map(|f| (f.offset, f.secret.expose().to_owned())).collect();
        prop_assert_eq!(&offsets, &expected);
        prop_assert_eq!(&offsets, &reference(&buf));
        for finding in &whole {
            let newlines = buf[..finding.offset as usize].iter().filter(|&&b| b == b'\n').count();
            prop_assert_eq!(finding.line, newlines as u64 + 1);
        }
        let mut reader = Trickle(&buf, reads.into_iter());
        let (chunked, bytes) = scan_reader(&mut reader, &mut Vec::new(), chunk).unwrap();
        prop_assert_eq!(chunked, whole);
        prop_assert_eq!(bytes, buf.len() as u64);
    }

    #[test]
    fn any_bytes_find_what_the_reference_finds(buf in prop::collection::vec(any::<u8>(), 0..400)) {
        let found: Vec<(u64, String)> = find_secrets(&buf)
            .into_iter()
            .map(|f| (f.offset, f.secret.expose().to_owned()))
            .collect();
        prop_assert_eq!(found, reference(&buf));
    }
}
