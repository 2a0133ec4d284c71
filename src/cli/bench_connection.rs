//! One HTTP/2 connection straight to one node, for `raftmq bench --connection direct`.
//!
//! A benchmark that drives a thousand unary calls at one healthy node needs little of what a
//! general gRPC client does per call: tonic's `Channel` queues every call through tower's
//! `Buffer` (a hand-off to a worker task and a oneshot back), hyper spawns a task per call to
//! pipe the request body and passes each call to its connection task over a channel, and
//! tonic wraps both ends in its streaming encoder and decoder. A unary call is its headers,
//! one gRPC frame (a 5-byte prefix and the protobuf message) and, in the reply, one frame and
//! the `grpc-status` trailer; here each call is exactly that, on the `h2` crate's connection.
//! Whatever the layers cost is CPU the brokers on the same machine do not get. A connection
//! error fails the call (the bench counts it as failed); nothing is retried.

use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};

// Built once, not parsed again on every call.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Why a call over a [`BenchConnection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("HTTP status {0}")]
    HttpStatus(http::StatusCode),
    #[error("gRPC status {code}: {message}")]
    Grpc { code: String, message: String },
    #[error("cannot build the call: {0}")]
    Request(String),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

#[derive(Clone)]
pub struct BenchConnection {
    sender: h2::client::SendRequest<Bytes>,
    /// The node's `host:port`, in each call's URI.
    authority: Authority,
    /// The `grpc-timeout` every call carries, as tonic's clients send it.
    timeout: HeaderValue,
}

impl BenchConnection {
    /// Connect to `addr` (`host:port`); every call will carry `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<BenchConnection> {
        let authority: Authority = addr
            .parse()
            .with_context(|| format!("bad endpoint `{addr}`"))?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        // hyper's client windows, so that this connection moves data as tonic's would.
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .handshake(stream)
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        let peer = addr.to_string();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("connection to {peer} ended: {err}");
            }
        });
        let timeout = HeaderValue::from_str(&format!("{}m", timeout.as_millis().max(1)))
            .context("grpc-timeout header")?;
        Ok(BenchConnection {
            sender,
            authority,
            timeout,
        })
    }

    /// Call `path` (`/package.Service/Method`) with `request` and decode the reply.
    pub async fn unary<Request: prost::Message, Reply: prost::Message + Default>(
        &self,
        path: &'static str,
        request: &Request,
    ) -> Result<Reply, CallError> {
        let len = request.encoded_len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0); // not compressed
        frame.put_u32(len as u32);
        request
            .encode(&mut frame)
            .map_err(|e| CallError::Request(e.to_string()))?;
        let reply = self.call(path, frame.freeze()).await?;
        Reply::decode(reply).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// Call `path` with `frame`, the request's bytes as they go on the wire (a gRPC prefix and
    /// the message; tests send malformed ones), and return the reply's message bytes.
    pub async fn call(&self, path: &'static str, frame: Bytes) -> Result<Bytes, CallError> {
        let uri = http::Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| CallError::Request(e.to_string()))?;
        let head = http::Request::post(uri)
            .header(CONTENT_TYPE, APPLICATION_GRPC)
            .header(TE, TRAILERS)
            .header(GRPC_TIMEOUT, self.timeout.clone())
            .body(())
            .map_err(|e| CallError::Request(e.to_string()))?;
        let mut sender = self.sender.clone().ready().await?;
        let (response, mut request_body) = sender.send_request(head, false)?;
        request_body.send_data(frame, true)?;

        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(CallError::HttpStatus(response.status()));
        }
        // A rejection may come as headers alone ("trailers-only").
        grpc_status(response.headers())?;
        let mut body = response.into_body();
        let mut reply = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
            reply.extend_from_slice(&chunk);
        }
        match body.trailers().await? {
            Some(trailers) => grpc_status(&trailers)?,
            None => return Err(CallError::Malformed("no grpc-status trailer".into())),
        }
        match reply.first() {
            Some(0) if reply.len() >= 5 => Ok(reply.freeze().split_off(5)),
            _ => Err(CallError::Malformed(
                "expected one uncompressed gRPC frame".into(),
            )),
        }
    }
}

/// `Err` when `headers` carry a `grpc-status` other than 0 (OK).
fn grpc_status(headers: &http::HeaderMap) -> Result<(), CallError> {
    match headers.get(GRPC_STATUS).map(|v| v.as_bytes()) {
        None | Some(b"0") => Ok(()),
        Some(code) => Err(CallError::Grpc {
            code: String::from_utf8_lossy(code).into_owned(),
            message: headers
                .get(GRPC_MESSAGE)
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default(),
        }),
    }
}
