//! A request id per call: the caller's `x-request-id` when it sent a usable one, else a new
//! one (`telemetry::call::RequestId`). Every log line of the call carries it, and the
//! response's metadata returns it; the call layers of both ports (`grpc::calls`,
//! `http::observe`) apply it.

use http::{HeaderName, HeaderValue};

use crate::domain::secret::may_hold_secret;

/// The metadata key of the request id, in requests and responses.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller; longer ones are replaced.
pub const MAX_LEN: usize = 128;

/// Returns whether a caller's request id may be used: 1 to [`MAX_LEN`] visible ASCII
/// characters, so that it cannot break a log line or a header, holding nothing shaped like
/// a secret's body ([`may_hold_secret`]): an id is written to every line of its call, so a
/// client that put a bearer token there (a misplaced header, a templated id), joined to
/// anything, must not have it logged. Such an id is replaced by one made here.
pub fn usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes.iter().all(u8::is_ascii_graphic)
        && !may_hold_secret(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::{TokenPrefix, TokenSecret};

    #[test]
    fn callers_ids_are_used_only_when_short_and_printable() {
        assert!(usable(&HeaderValue::from_static("req-42_a.b:c")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("two words")));
        assert!(!usable(&HeaderValue::from_bytes(b"tab\there").unwrap()));
        assert!(!usable(&HeaderValue::from_bytes(&[0xc3, 0xa9]).unwrap()));
        assert!(usable(
            &HeaderValue::from_str(&"a".repeat(MAX_LEN)).unwrap()
        ));
        assert!(!usable(
            &HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap()
        ));
    }

    #[test]
    fn an_id_holding_a_secret_is_not_used() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        // One character changed: not a valid secret, and still all but one character of one.
        let mut near = secret.expose().to_owned();
        let last = near.pop().unwrap();
        near.push(if last == 'A' { 'B' } else { 'A' });
        let s = secret.expose();
        for id in [
            s.to_owned(),
            format!("req-{s}"),
            format!("{s}.retry"),
            format!("req_{s}"),
            format!("{s}_2"),
            format!("{s}x"),
            format!("X{s}"),
            format!("Bearer%20{s}"),
            near,
        ] {
            assert!(!usable(&HeaderValue::from_str(&id).unwrap()), "kept {id}");
        }
        // Ids as clients make them are kept.
        for id in [
            "deploy-42.create",
            "req_2026-12-02_17",
            "01a2368c-6723-74cc-8c11-17f79e92e8ed",
            "faa019d9bd53ad350000000000000000",
        ] {
            assert!(usable(&HeaderValue::from_static(id)), "refused {id}");
        }
    }
}
