//! Header lookups in the small maps every call carries.
//!
//! `HeaderMap::get` hashes the name first (about 150 instructions for a name like
//! `grpc-status`); the maps a gRPC call looks into hold a handful of entries (a unary
//! answer's headers and trailers, a Verify's request headers), where comparing names in
//! turn costs a tenth of that. Larger maps are looked up by hash as usual.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Maps up to this many entries are searched in order rather than by hash.
const SCAN_UP_TO: usize = 8;

/// The first value of `name` in `headers`, as `HeaderMap::get` returns it.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= SCAN_UP_TO {
        // `iter` yields each name's values together, the first first, so the first match
        // is the value `get` returns.
        headers
            .iter()
            .find_map(|(key, value)| (key == name).then_some(value))
    } else {
        headers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: HeaderName = HeaderName::from_static("grpc-status");

    #[test]
    fn finds_what_get_finds_in_small_and_large_maps() {
        for size in [0, 1, 3, SCAN_UP_TO - 1, SCAN_UP_TO, SCAN_UP_TO + 1, 40] {
            for position in [None, Some(0), Some(size / 2), Some(size.saturating_sub(1))] {
                let mut headers = HeaderMap::new();
                for i in 0..size {
                    let name = if position == Some(i) {
                        WANTED
                    } else {
                        HeaderName::try_from(format!("x-filler-{i}")).unwrap()
                    };
                    headers.append(name.clone(), HeaderValue::from(i));
                    // A second value of the same name: `get` answers the first.
                    headers.append(name, HeaderValue::from(1000 + i));
                }
                headers.append(http::header::CONTENT_TYPE, HeaderValue::from_static("x"));
                assert_eq!(
                    get(&headers, &WANTED),
                    headers.get(&WANTED),
                    "{size} {position:?}"
                );
                assert_eq!(
                    get(&headers, &http::header::CONTENT_TYPE),
                    headers.get(http::header::CONTENT_TYPE)
                );
            }
        }
    }
}
