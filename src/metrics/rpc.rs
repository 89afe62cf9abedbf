//! gRPC calls counted and timed by service, method and status code, by the call layer
//! around every service on the port (`grpc::calls`).
//!
//! Labels stay bounded: only the methods in [`KNOWN_METHODS`] are named, any other path
//! counts as `unknown`, and codes are the 17 of gRPC. Each (method, code) pair has its own
//! lock-free histogram (each thread's cells made at its first call, about 56 KB), so
//! recording a call allocates nothing after that, takes no lock and writes no cache line
//! another core writes.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use super::{
    Metrics,
    histogram::{Histograms, RPC_BOUNDS, Snapshot},
};

/// The methods served here, as request paths. The Envoy ext_authz `Check` is listed so that
/// it is named as soon as it is served.
pub const KNOWN_METHODS: [&str; 22] = [
    "/tokenauthority.v1.VerifyService/Verify",
    "/envoy.service.auth.v3.Authorization/Check",
    "/tokenauthority.v1.TokenService/CreateToken",
    "/tokenauthority.v1.TokenService/GetToken",
    "/tokenauthority.v1.TokenService/ListTokens",
    "/tokenauthority.v1.TokenService/UpdateToken",
    "/tokenauthority.v1.TokenService/SetTokenEnabled",
    "/tokenauthority.v1.TokenService/DeleteToken",
    "/tokenauthority.v1.TokenService/RotateToken",
    "/tokenauthority.v1.TokenService/RevokeTokens",
    "/tokenauthority.v1.TokenService/LookupToken",
    "/tokenauthority.v1.LeakService/ReportLeakedTokens",
    "/tokenauthority.v1.TokenTypeService/ListTokenTypes",
    "/tokenauthority.v1.TokenTypeService/GetTokenType",
    "/tokenauthority.v1.TokenTypeService/CreateTokenType",
    "/tokenauthority.v1.TokenTypeService/UpdateTokenType",
    "/tokenauthority.v1.TokenTypeService/DeleteTokenType",
    "/tokenauthority.v1.AuditService/ListAuditEvents",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The index every other path maps to, labelled `unknown`.
const UNKNOWN: usize = KNOWN_METHODS.len();

/// gRPC has codes 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// A method of [`KNOWN_METHODS`], by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method(usize);

impl Method {
    /// Returns the method a request path (`/package.Service/Method`) names, or `unknown`.
    pub fn of(path: &str) -> Self {
        Self(
            KNOWN_METHODS
                .iter()
                .position(|&known| known == path)
                .unwrap_or(UNKNOWN),
        )
    }

    /// Returns whether the method is Verify or ext_authz Check: the hot paths, which judge
    /// the token they carry in the request, never the caller's own credential (so they
    /// need nothing of the transport but the bytes).
    pub fn is_verification(self) -> bool {
        self.0 <= 1
    }

    /// Returns `package.Service/Method`, or `unknown`.
    pub fn name(self) -> &'static str {
        KNOWN_METHODS
            .get(self.0)
            .map_or("unknown", |path| &path[1..])
    }

    /// Returns the (service, method) names.
    pub fn names(self) -> (&'static str, &'static str) {
        self.name()
            .split_once('/')
            .unwrap_or(("unknown", "unknown"))
    }
}

/// Latency histograms of every (method, code) pair; a histogram's count is the call count.
#[derive(Debug)]
pub struct RpcTable {
    cells: Histograms,
}

impl Default for RpcTable {
    fn default() -> Self {
        Self {
            cells: Histograms::new(RPC_BOUNDS, (UNKNOWN + 1) * CODES),
        }
    }
}

impl RpcTable {
    /// Records one finished call.
    pub fn record(&self, method: Method, code: Code, elapsed: Duration) {
        let code = (code as usize).min(CODES - 1);
        self.cells.observe(method.0 * CODES + code, elapsed);
    }

    /// Returns every (service, method, code, histogram) that recorded a call.
    pub fn used(&self) -> impl Iterator<Item = (&'static str, &'static str, Code, Snapshot)> {
        self.cells
            .snapshots()
            .into_iter()
            .enumerate()
            .filter_map(|(i, cell)| {
                let (service, method) = Method(i / CODES).names();
                let code = Code::from_i32((i % CODES) as i32);
                (cell.count() > 0).then_some((service, method, code, cell))
            })
    }
}

/// Returns the name Prometheus users know for a code (`OK`, `NotFound`, …), as grpc-go and
/// go-grpc-prometheus spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A call not yet recorded. Dropped unrecorded (the client went away, or the connection
/// did), it counts as `Canceled`.
#[derive(Debug)]
pub struct InFlight {
    metrics: Arc<Metrics>,
    method: Method,
    start: Instant,
    done: bool,
}

impl InFlight {
    /// Starts timing a call of `method`.
    pub fn start(metrics: Arc<Metrics>, method: Method) -> Self {
        Self {
            metrics,
            method,
            start: Instant::now(),
            done: false,
        }
    }

    /// Records the call as answered `code` (only the first time).
    pub fn finish(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .rpc
                .record(self.method, code, self.start.elapsed());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The status in a `grpc-status` header or trailer, if there is one.
pub fn status_of(headers: &HeaderMap) -> Option<Code> {
    let value = crate::headers::get(headers, &GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()?;
    Some(Code::from_i32(code))
}

pin_project! {
    /// A response body that records its call when the trailers go out.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<InFlight>,
    }
}

impl<B> MeteredBody<B> {
    /// Wraps a response body; `call`, if still unrecorded, is recorded by the trailers.
    pub fn new(inner: B, call: Option<InFlight>) -> Self {
        Self { inner, call }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(status_of(trailers).unwrap_or(Code::Unknown));
                    }
                }
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => call.finish(Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_are_named() {
        assert_eq!(
            Method::of("/tokenauthority.v1.VerifyService/Verify").names(),
            ("tokenauthority.v1.VerifyService", "Verify")
        );
        for path in [
            "/tokenauthority.v1.VerifyService/Nope",
            "/no.such.Service/Verify",
            "/unknown/unknown",
            "/tokenauthority.v1.VerifyService/Verify/extra",
            "",
            "/",
            "ta_secret-looking-path",
        ] {
            assert_eq!(Method::of(path).names(), ("unknown", "unknown"), "{path:?}");
        }
    }

    #[test]
    fn every_served_method_is_known() {
        use prost::Message;
        let sets = [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for file in set.file {
                for service in &file.service {
                    let full = format!("{}.{}", file.package(), service.name());
                    for method in &service.method {
                        let path = format!("/{full}/{}", method.name());
                        assert_ne!(
                            Method::of(&path).0,
                            UNKNOWN,
                            "{path} is not in KNOWN_METHODS"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn only_verify_and_check_are_verifications() {
        let verifications: Vec<_> = KNOWN_METHODS
            .iter()
            .filter(|path| Method::of(path).is_verification())
            .collect();
        assert_eq!(
            verifications,
            [
                &"/tokenauthority.v1.VerifyService/Verify",
                &"/envoy.service.auth.v3.Authorization/Check"
            ]
        );
        assert!(!Method::of("/unknown").is_verification());
    }

    #[test]
    fn codes_are_bounded() {
        let table = RpcTable::default();
        let method = Method::of("/grpc.health.v1.Health/Check");
        table.record(method, Code::from_i32(99), Duration::from_millis(1));
        table.record(method, Code::Ok, Duration::from_millis(1));
        let used: Vec<_> = table
            .used()
            .map(|(_, _, code, h)| (code, h.count()))
            .collect();
        assert_eq!(used, [(Code::Ok, 1), (Code::Unknown, 1)]);
    }
}
