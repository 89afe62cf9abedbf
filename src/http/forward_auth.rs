//! Forward auth at `/v1/forward-auth`: the HTTP protocol that nginx (`auth_request`),
//! ingress-nginx (`auth-url`), Traefik (`ForwardAuth`), Caddy (`forward_auth`), HAProxy and
//! Envoy's ext_authz HTTP mode speak. The proxy sends the original request's credential,
//! method, URI, host and client in headers; `200` lets it through with the token's identity
//! headers, `401`/`403`/`429` refuse it. The request is judged by the same core as Check.
//!
//! Per-route settings are in the path of the auth URL the proxy's own configuration names,
//! never in anything the client sends: `/require/<permissions>` (comma-separated),
//! `/bind/<key>=<value>`, `/ignore-bindings`, and `/-` after which Envoy's HTTP mode (which
//! appends the original path to its `path_prefix`) puts the original path. The query string
//! is never read for settings: Caddy and Envoy pass the client's own query through.

use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{HttpState, Peer, json_error};
use crate::{
    authz::{self, Decision, Denial, Headers, HttpRequest, Route},
    domain::{permission::Permission, restrictions::client_address},
    metrics::Endpoint,
};

/// Where the endpoint is mounted.
pub const PREFIX: &str = "/v1/forward-auth";

/// What the auth URL's path says: the route's settings, and (Envoy's HTTP mode) the
/// original path after `/-`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The route's permissions, bindings and binding mode.
    pub route: Route,
    /// The original request's path, when the auth URL carries it after `/-`.
    pub original_path: Option<String>,
}

/// Reads the settings segments of an auth URL's path (what follows [`PREFIX`]).
pub fn parse_settings(rest: &str) -> Result<Settings, String> {
    let mut settings = Settings::default();
    let mut segments = rest.split('/').filter(|s| !s.is_empty());
    while let Some(segment) = segments.next() {
        match segment {
            "-" => {
                // Everything after it is the original path, as the proxy sent it; none of
                // it is ever read as a setting.
                let tail = rest.split_once("/-").map_or("", |(_, tail)| tail);
                settings.original_path = Some(if tail.is_empty() {
                    "/".into()
                } else {
                    tail.into()
                });
                return Ok(settings);
            }
            "require" => {
                let listed = decode(segments.next().ok_or("require: needs a permission list")?)?;
                let mut permissions = settings.route.permissions.take().unwrap_or_default();
                for permission in listed.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    permissions
                        .push(Permission::parse(permission).map_err(|e| format!("require: {e}"))?);
                }
                settings.route.permissions = Some(permissions);
            }
            "bind" => {
                let binding = decode(segments.next().ok_or("bind: needs key=value")?)?;
                let (key, value) = binding
                    .split_once('=')
                    .ok_or_else(|| format!("bind: {binding:?} is not key=value"))?;
                settings
                    .route
                    .bind(key, value)
                    .map_err(|e| format!("bind: {e}"))?;
            }
            "ignore-bindings" => settings.route.ignore_bindings = true,
            other => {
                return Err(format!(
                    "{:?} is not a setting: use require/<permissions>, bind/<key>=<value>, \
                     ignore-bindings, or - before the original path",
                    other.chars().take(64).collect::<String>()
                ));
            }
        }
    }
    Ok(settings)
}

/// Percent-decodes a settings segment; it must stay printable ASCII.
fn decode(segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{segment:?} has a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| format!("{segment:?} is not printable ASCII"))
}

/// What a request says of the request it asks about, once what it may be believed on is
/// settled.
struct Original<'a> {
    method: &'a str,
    target: String,
    host: Option<String>,
    client: Option<IpAddr>,
}

/// Works out the original request: from the proxy's headers when the peer is a trusted
/// proxy, else from the request itself (the peer is then the client). Headers that say
/// the same thing must agree: some proxies (ingress-nginx, Traefik) pass the client's own
/// headers on to the auth request beside the ones they set, so a client could add an
/// `X-Original-URI` of its choosing next to the proxy's `X-Original-URL`; such a request is
/// refused rather than judged on either.
fn original<'a>(
    request: &'a Request,
    settings: &Settings,
    trusted: &[ipnet::IpNet],
    peer: IpAddr,
) -> Result<Original<'a>, String> {
    let headers = request.headers();
    let believed = trusted.iter().any(|net| net.contains(&peer));
    let own_target = || {
        let path = settings.original_path.clone().unwrap_or_else(|| "/".into());
        match request.uri().query() {
            Some(query) if settings.original_path.is_some() => format!("{path}?{query}"),
            _ => path,
        }
    };
    let own_host = || {
        headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
    };
    if !believed {
        return Ok(Original {
            method: request.method().as_str(),
            target: own_target(),
            host: own_host(),
            client: Some(peer),
        });
    }
    let url = one(headers, "x-original-url")?
        .map(|url| {
            url.parse::<http::Uri>()
                .map_err(|_| "X-Original-URL is not a URL".to_owned())
        })
        .transpose()?;
    let url_target = url
        .as_ref()
        .and_then(|u| u.path_and_query())
        .map(|p| p.as_str().to_owned());
    let url_host = url
        .as_ref()
        .and_then(|u| u.authority())
        .map(|a| a.to_string());
    let target = agreed(
        "the original URI",
        [
            one(headers, "x-original-uri")?.map(str::to_owned),
            url_target,
            one(headers, "x-forwarded-uri")?.map(str::to_owned),
        ],
    )?
    .unwrap_or_else(own_target);
    let host = agreed(
        "the original host",
        [
            one(headers, "x-forwarded-host")?.map(str::to_owned),
            url_host,
        ],
    )?
    .or_else(own_host);
    let method = agreed(
        "the original method",
        [
            one(headers, "x-original-method")?,
            one(headers, "x-forwarded-method")?,
        ],
    )?
    .unwrap_or(request.method().as_str());
    Ok(Original {
        method,
        target,
        host,
        client: forwarded_client(headers, peer, trusted),
    })
}

/// The one value of a describing header; sent twice, or not text, it cannot be believed.
fn one<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("{name} is sent more than once"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("{name} is not text"))
}

/// The value the headers that carry the same fact agree on; `Err` when they disagree.
fn agreed<T: PartialEq>(
    what: &str,
    values: impl IntoIterator<Item = Option<T>>,
) -> Result<Option<T>, String> {
    let mut found: Option<T> = None;
    for value in values.into_iter().flatten() {
        match &found {
            Some(seen) if *seen != value => {
                return Err(format!("the proxy's headers disagree on {what}"));
            }
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

/// The client a trusted proxy names: the rightmost `X-Forwarded-For` entry that is not
/// itself a trusted proxy, else `X-Real-IP`, else the proxy. A chain that cannot be read
/// makes the client unknown, so that tokens limited to networks fail closed.
fn forwarded_client(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let chain: Option<Vec<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    match chain {
        None => None,
        Some(chain) if !chain.is_empty() => client_address(peer, Some(&chain.join(",")), trusted),
        Some(_) => match headers.get("x-real-ip") {
            None => Some(peer),
            Some(real) => real
                .to_str()
                .ok()
                .and_then(crate::domain::restrictions::parse_ip)
                .map(crate::domain::restrictions::canonical_ip),
        },
    }
}

/// Answers a forward-auth request.
pub async fn handle(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no peer address",
        );
    };
    let rest = request
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default();
    let settings = match parse_settings(rest) {
        Ok(settings) => settings,
        // The proxy's configuration names a bad URL: its operator must see it, and no
        // request passes meanwhile.
        Err(message) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("forward-auth URL: {message}"),
            );
        }
    };
    let peer = crate::domain::restrictions::canonical_ip(peer.ip());
    let original = match original(
        &request,
        &settings,
        &state.forward_auth_trusted_proxies,
        peer,
    ) {
        Ok(original) => original,
        // A request a client may have tampered with: refused, and never passed.
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    let pairs: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let headers = Headers::new(pairs);
    let described = HttpRequest {
        method: original.method,
        path: &original.target,
        host: original.host.as_deref(),
        headers: &headers,
        client_ip: original.client,
        peer: Some(peer),
        route: &settings.route,
    };
    let judged = authz::authorize(&state.app.verifier, &state.check, &described).await;
    let (decision, verdict) = match judged {
        Ok(judged) => judged,
        Err(error) => {
            tracing::error!(%error, "store unavailable for forward auth");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "token store unavailable",
            );
        }
    };
    if let Some(verdict) = &verdict {
        state
            .app
            .metrics
            .record_verdict(Endpoint::ForwardAuth, verdict.outcome);
    }
    match decision {
        Decision::Allow { token, .. } => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            // Every one, always (empty if it cannot be a header value), so that a proxy
            // copying them onto the request never lets a client-sent one through.
            for (name, value) in state.identity_names.iter().zip(token.identity_values()) {
                headers.insert(name.clone(), value.clone());
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Decision::Deny(denial) => deny(&state, &denial),
    }
}

fn deny(state: &HttpState, denial: &Denial) -> Response {
    let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, Body::from(denial.body())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(challenge) = denial.challenge(&state.check.realm)
        && let Ok(value) = HeaderValue::from_str(&challenge)
    {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(list: &[&str]) -> Option<Vec<Permission>> {
        Some(list.iter().map(|p| Permission::parse(p).unwrap()).collect())
    }

    #[test]
    fn settings_come_from_the_path_before_the_dash() {
        let s = parse_settings("/require/reports:export,reports:read/bind/tenant=acme").unwrap();
        assert_eq!(
            s.route.permissions,
            perms(&["reports:export", "reports:read"])
        );
        assert_eq!(s.route.bindings["tenant"], "acme");
        assert_eq!(s.original_path, None);

        let s = parse_settings("/require/reports:export/-/require/admin:*/x").unwrap();
        assert_eq!(s.route.permissions, perms(&["reports:export"]));
        assert_eq!(
            s.original_path.as_deref(),
            Some("/require/admin:*/x"),
            "what follows the dash is the original path, never settings"
        );
        assert_eq!(
            parse_settings("/-").unwrap().original_path.as_deref(),
            Some("/")
        );
        assert_eq!(parse_settings("").unwrap(), Settings::default());
        assert!(
            parse_settings("/ignore-bindings")
                .unwrap()
                .route
                .ignore_bindings
        );
        assert_eq!(
            parse_settings("/require/%2A:read")
                .unwrap()
                .route
                .permissions,
            perms(&["*:read"]),
            "percent-escaped"
        );
    }

    #[test]
    fn bad_settings_name_the_problem() {
        for (path, expected) in [
            ("/require", "require"),
            ("/require/Reports", "require"),
            ("/bind/tenant", "key=value"),
            ("/bind/a%20b=c", "printable"),
            ("/bind/a.b!=c", "bind"),
            ("/reports/1", "is not a setting"),
            ("/require/%zz", "percent"),
        ] {
            let error = parse_settings(path).unwrap_err();
            assert!(error.contains(expected), "{path}: {error}");
        }
    }
}
