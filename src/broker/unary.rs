//! Unary gRPC calls served without tonic's codec, for the client port's hottest call.
//!
//! A producer sends one message per SendMessage call, so what the call machinery costs is
//! paid per message. tonic serves a unary call through its streaming decoder and encoder
//! (a fresh 8 KiB buffer each way, the body copied into one) behind two boxed futures; here
//! the request is its one gRPC frame (a 5-byte prefix and the protobuf message), decoded in
//! place, and the reply is one frame and the `grpc-status` trailer. The handler is the same
//! tonic service method, given the same `tonic::Request`, and a rejected call gets the status
//! tonic would give it. Compressed calls are not served here (see [`is_plain_grpc`]).

use std::future::Future;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, HeaderName};
use http_body_util::{BodyExt, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use tonic::Status;
use tonic::metadata::MetadataMap;

const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const STATUS_OK: HeaderValue = HeaderValue::from_static("0");
/// A gRPC frame's prefix: a compressed flag and the message's length (big-endian u32).
const PREFIX_BYTES: usize = 5;

/// Whether a call's messages are uncompressed gRPC, the only kind [`serve`] decodes.
pub fn is_plain_grpc(headers: &HeaderMap) -> bool {
    let grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let plain = headers
        .get(GRPC_ENCODING)
        .is_none_or(|v| v.as_bytes() == b"identity");
    grpc && plain
}

/// Serve one unary call: decode its request message (at most `max_message_bytes`), hand it to
/// `handler` and encode the reply, or the handler's or the decoding's error status.
pub async fn serve<Body, Req, Resp, Handler, Reply>(
    request: http::Request<Body>,
    max_message_bytes: usize,
    handler: Handler,
) -> http::Response<tonic::body::Body>
where
    Body: hyper::body::Body<Data = Bytes>,
    Body::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Req: prost::Message + Default,
    Resp: prost::Message,
    Handler: FnOnce(tonic::Request<Req>) -> Reply,
    Reply: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let (parts, body) = request.into_parts();
    let decoded = read_message(body, max_message_bytes)
        .await
        .and_then(|bytes| {
            Req::decode(bytes).map_err(|err| {
                Status::internal(format!("failed to decode Protobuf message: {err}"))
            })
        });
    let message = match decoded {
        Ok(message) => message,
        Err(status) => {
            let path = parts.uri.path();
            if matches!(
                status.code(),
                tonic::Code::Internal | tonic::Code::OutOfRange
            ) {
                tracing::info!(path, code = ?status.code(), message = status.message(), "malformed request rejected");
            } else {
                // The client reset the call or its connection broke before the request was in.
                tracing::debug!(path, code = ?status.code(), message = status.message(), "request not read");
            }
            return failed(status);
        }
    };
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    );
    match handler(request).await {
        Ok(reply) => replied(reply),
        Err(status) => failed(status),
    }
}

/// The request's one message, without its prefix.
async fn read_message<Body>(body: Body, max_message_bytes: usize) -> Result<Bytes, Status>
where
    Body: hyper::body::Body<Data = Bytes>,
    Body::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = Limited::new(body, max_message_bytes + PREFIX_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                Status::out_of_range(format!(
                    "the request message is larger than the limit of {max_message_bytes} bytes"
                ))
            } else {
                // The client reset the call or the connection failed: tonic's mapping.
                Status::from_error(err)
            }
        })?;
    // One DATA frame, the usual case, comes back as it arrived, without a copy.
    let mut frame = collected.to_bytes();
    if frame.is_empty() {
        return Err(Status::internal("Missing request message."));
    }
    if frame.len() < PREFIX_BYTES {
        return Err(Status::internal(
            "malformed gRPC frame: shorter than its 5-byte prefix",
        ));
    }
    let compressed = frame.get_u8();
    let length = frame.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ));
    }
    if length > max_message_bytes {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {length} bytes, the limit is: {max_message_bytes} bytes"
        )));
    }
    if length != frame.len() {
        return Err(Status::internal(format!(
            "malformed gRPC frame: the prefix says {length} bytes, the call carried {}",
            frame.len()
        )));
    }
    Ok(frame)
}

/// A reply as one gRPC frame, then `grpc-status: 0` with the handler's metadata as headers.
fn replied<Resp: prost::Message>(
    reply: tonic::Response<Resp>,
) -> http::Response<tonic::body::Body> {
    let (metadata, message, extensions) = reply.into_parts();
    let length = message.encoded_len();
    let Ok(prefix_length) = u32::try_from(length) else {
        return failed(Status::out_of_range(format!(
            "the reply of {length} bytes is too large"
        )));
    };
    let mut frame = BytesMut::with_capacity(PREFIX_BYTES + length);
    frame.put_u8(0);
    frame.put_u32(prefix_length);
    message
        .encode(&mut frame)
        .expect("the buffer was sized by encoded_len");
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, STATUS_OK);
    let frames = [
        Ok::<_, Status>(Frame::data(frame.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = http::Response::new(tonic::body::Body::new(StreamBody::new(
        futures::stream::iter(frames),
    )));
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_GRPC);
    *response.extensions_mut() = extensions;
    response
}

/// A failed call as gRPC sends it: a trailers-only response with the status.
fn failed(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use prost::Message as _;
    use raftmq_proto::rocketmq::v2;
    use tonic::Code;

    const LIMIT: usize = 64 * 1024;

    fn frame(compressed: u8, declared: u32, message: &[u8]) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_u8(compressed);
        frame.put_u32(declared);
        frame.put_slice(message);
        frame.freeze()
    }

    fn heartbeat(group: &str) -> Vec<u8> {
        let request = v2::HeartbeatRequest {
            group: Some(v2::Resource {
                name: group.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        request.encode_to_vec()
    }

    fn call(body: Bytes) -> http::Request<Full<Bytes>> {
        http::Request::post("/apache.rocketmq.v2.MessagingService/Heartbeat")
            .header(CONTENT_TYPE, "application/grpc")
            .header("x-mq-client-id", "client-1")
            .body(Full::new(body))
            .unwrap()
    }

    /// Serve `request` with a handler that answers with the group's name and the caller's
    /// client id, as a handler reads them from the request.
    async fn serve_echo<Body>(request: http::Request<Body>) -> http::Response<tonic::body::Body>
    where
        Body: hyper::body::Body<Data = Bytes>,
        Body::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        serve(
            request,
            LIMIT,
            |request: tonic::Request<v2::HeartbeatRequest>| async move {
                let client_id = request.metadata().get("x-mq-client-id").cloned();
                let group = request.into_inner().group.unwrap_or_default().name;
                if group == "refused" {
                    return Err(Status::failed_precondition("refused by the handler"));
                }
                let mut reply = tonic::Response::new(v2::HeartbeatResponse {
                    status: Some(v2::Status {
                        code: v2::Code::Ok as i32,
                        message: group,
                    }),
                });
                if let Some(client_id) = client_id {
                    reply.metadata_mut().insert("x-echo-client-id", client_id);
                }
                Ok(reply)
            },
        )
        .await
    }

    /// The reply's status code, message and (when OK) the decoded reply.
    async fn outcome(
        response: http::Response<tonic::body::Body>,
    ) -> (Code, String, Option<v2::HeartbeatResponse>) {
        // A failure is a trailers-only response: the status is in the headers.
        if let Some(status) = Status::from_header_map(response.headers()) {
            return (status.code(), status.message().to_string(), None);
        }
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("a grpc-status trailer");
        let mut body = collected.to_bytes();
        assert_eq!(body.get_u8(), 0, "uncompressed");
        assert_eq!(
            body.get_u32() as usize,
            body.len(),
            "the prefix gives the message's length"
        );
        let reply = v2::HeartbeatResponse::decode(body).unwrap();
        let status = Status::from_header_map(&trailers).expect("grpc-status");
        (status.code(), status.message().to_string(), Some(reply))
    }

    #[tokio::test]
    async fn a_well_formed_call_reaches_the_handler_with_its_metadata() {
        let message = heartbeat("group-a");
        let response = serve_echo(call(frame(0, message.len() as u32, &message))).await;
        assert_eq!(response.headers()["x-echo-client-id"], "client-1");
        let (code, _, reply) = outcome(response).await;
        assert_eq!(code, Code::Ok);
        assert_eq!(reply.unwrap().status.unwrap().message, "group-a");
    }

    #[tokio::test]
    async fn a_message_split_over_several_data_frames_is_decoded() {
        let message = heartbeat("group-b");
        let whole = frame(0, message.len() as u32, &message);
        let (first, second) = (whole.slice(..3), whole.slice(3..));
        let chunks =
            futures::stream::iter([first, second].map(|b| Ok::<_, Status>(Frame::data(b))));
        let request = http::Request::post("/x")
            .header(CONTENT_TYPE, "application/grpc")
            .body(StreamBody::new(chunks))
            .unwrap();
        let (code, _, reply) = outcome(serve_echo(request).await).await;
        assert_eq!(code, Code::Ok);
        assert_eq!(reply.unwrap().status.unwrap().message, "group-b");
    }

    #[tokio::test]
    async fn the_handlers_error_is_the_calls_status() {
        let message = heartbeat("refused");
        let (code, text, _) =
            outcome(serve_echo(call(frame(0, message.len() as u32, &message))).await).await;
        assert_eq!(code, Code::FailedPrecondition);
        assert_eq!(text, "refused by the handler");
    }

    #[tokio::test]
    async fn malformed_requests_get_a_clear_status_and_never_reach_the_handler() {
        let message = heartbeat("group-a");
        let len = message.len() as u32;
        let cases: Vec<(&str, Bytes, Code, &str)> = vec![
            (
                "no message",
                Bytes::new(),
                Code::Internal,
                "Missing request message",
            ),
            (
                "a cut prefix",
                Bytes::from_static(&[0, 0, 0]),
                Code::Internal,
                "shorter than its 5-byte prefix",
            ),
            (
                "compressed",
                frame(1, len, &message),
                Code::Internal,
                "compressed-flag",
            ),
            (
                "a short message",
                frame(0, len + 10, &message),
                Code::Internal,
                "the prefix says",
            ),
            (
                "trailing bytes",
                frame(0, len - 1, &message),
                Code::Internal,
                "the prefix says",
            ),
            (
                "over the limit",
                frame(0, LIMIT as u32 + 1, &[]),
                Code::OutOfRange,
                "too large",
            ),
            (
                "a body over the limit",
                frame(0, LIMIT as u32, &vec![0; LIMIT + 10]),
                Code::OutOfRange,
                "larger than the limit",
            ),
            (
                "not protobuf",
                frame(0, 3, &[0xff, 0xff, 0xff]),
                Code::Internal,
                "failed to decode Protobuf message",
            ),
        ];
        for (case, body, expected, text) in cases {
            let response = serve(
                call(body),
                LIMIT,
                |_: tonic::Request<v2::HeartbeatRequest>| async {
                    panic!("{case}: a malformed request reached the handler");
                    #[allow(unreachable_code)]
                    Ok(tonic::Response::new(v2::HeartbeatResponse::default()))
                },
            )
            .await;
            let (code, message, _) = outcome(response).await;
            assert_eq!(code, expected, "{case}: {message}");
            assert!(message.contains(text), "{case}: {message}");
        }
    }

    #[test]
    fn only_uncompressed_grpc_is_served_here() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(is_plain_grpc(&headers(&[(
            "content-type",
            "application/grpc"
        )])));
        assert!(is_plain_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(is_plain_grpc(&headers(&[
            ("content-type", "application/grpc"),
            ("grpc-encoding", "identity")
        ])));
        assert!(!is_plain_grpc(&headers(&[
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip")
        ])));
        assert!(!is_plain_grpc(&headers(&[(
            "content-type",
            "application/json"
        )])));
        assert!(!is_plain_grpc(&headers(&[])));
    }
}
