//! One in-process gRPC call: the request message in a gRPC frame, through the same tower
//! stack the gRPC port serves (metrics, request id, authority, the services and their
//! Detached wrappers), with the HTTP request's credential, request id, forwarded-for and
//! host, and the HTTP peer as the connection's peer; the answer's message or its status.

use std::{convert::Infallible, net::SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use tonic::{Status, transport::server::TcpConnectInfo};
use tower::{ServiceExt, util::BoxCloneSyncService};

use crate::grpc::request_id;

/// The gRPC port's services with its layers, callable in process.
pub type GrpcService =
    BoxCloneSyncService<Request<tonic::body::Body>, Response<tonic::body::Body>, Infallible>;

/// The request headers a call carries over, as a gRPC client would send them.
const CARRIED: [header::HeaderName; 2] = [header::AUTHORIZATION, request_id::HEADER];

/// Calls `grpc_path` with the encoded `message` as the HTTP request with these headers,
/// sent to `authority` (its Host, or HTTP/2's `:authority`) from `peer`, would, and
/// returns the encoded answer. `admitted`: the request was counted against its address's
/// rate limit already (`grpc::auth::Admitted`).
pub async fn call(
    service: &GrpcService,
    grpc_path: &str,
    message: Vec<u8>,
    headers: &HeaderMap,
    authority: Option<&str>,
    peer: SocketAddr,
    admitted: bool,
) -> Result<Bytes, Status> {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(
        u32::try_from(message.len())
            .map_err(|_| Status::resource_exhausted("message too large"))?,
    );
    frame.extend_from_slice(&message);
    let host = authority.and_then(|h| h.parse::<http::uri::Authority>().ok());
    let uri = match host {
        Some(authority) => Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(grpc_path)
            .build(),
        None => Uri::builder().path_and_query(grpc_path).build(),
    }
    .map_err(|_| Status::internal("bad gRPC path"))?;
    let mut request = Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(tonic::body::Body::new(Full::new(frame.freeze())))
        .map_err(|_| Status::internal("cannot build the call"))?;
    let grpc_headers = request.headers_mut();
    grpc_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    grpc_headers.insert(header::TE, HeaderValue::from_static("trailers"));
    for name in CARRIED {
        if let Some(value) = headers.get(&name) {
            grpc_headers.insert(name, value.clone());
        }
    }
    // Every value, as a gRPC client behind proxies would send them: origin_of believes
    // them only from --trusted-proxies.
    for value in headers.get_all("x-forwarded-for") {
        grpc_headers.append("x-forwarded-for", value.clone());
    }
    request.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(peer),
    });
    if admitted {
        request.extensions_mut().insert(crate::grpc::auth::Admitted);
    }
    // In a task of its own: a panic in a service is an internal error, not a lost
    // connection.
    let service = service.clone();
    let answer = tokio::spawn(async move {
        let Ok(response) = service.oneshot(request).await;
        let (parts, body) = response.into_parts();
        if let Some(status) = Status::from_header_map(&parts.headers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok((collected.to_bytes(), trailers))
    });
    let (data, trailers) = match answer.await {
        Ok(done) => done?,
        Err(_) => return Err(Status::internal("internal error")),
    };
    match Status::from_header_map(&trailers) {
        Some(status) if status.code() != tonic::Code::Ok => return Err(status),
        Some(_) => {}
        None => return Err(Status::internal("the call ended without a status")),
    }
    unframe(data)
}

/// The one uncompressed message of a unary answer.
fn unframe(data: Bytes) -> Result<Bytes, Status> {
    let bad = || Status::internal("a malformed answer");
    if data.len() < 5 || data[0] != 0 {
        return Err(bad());
    }
    let length = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() != 5 + length {
        return Err(bad());
    }
    Ok(data.slice(5..))
}
