//! One HTTP/2 connection straight to one node, for `raftmq bench`.
//!
//! tonic's `Channel` queues every call through tower's `Buffer`: a channel send, a hand-off to
//! the buffer's worker task and a oneshot back, per call. A benchmark that drives a thousand
//! calls at one healthy node needs neither that queue nor the channel's reconnects, and what
//! the queue costs is CPU the brokers on the same machine do not get. Here each call goes to
//! hyper's HTTP/2 sender directly; a connection error fails the call (the bench counts it as
//! failed) and is not retried.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Context as _;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use tonic::body::Body;

use crate::client::MAX_MESSAGE_BYTES;

#[derive(Clone)]
pub struct BenchConnection {
    sender: SendRequest<Body>,
}

impl BenchConnection {
    /// Connect to `addr` (`host:port`) and return a client for its MessagingService.
    pub async fn messaging(addr: &str) -> anyhow::Result<MessagingServiceClient<BenchConnection>> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        let peer = addr.to_string();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("connection to {peer} ended: {err}");
            }
        });
        let origin = format!("http://{addr}")
            .parse()
            .with_context(|| format!("bad endpoint `{addr}`"))?;
        Ok(
            MessagingServiceClient::with_origin(BenchConnection { sender }, origin)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower_service::Service<http::Request<Body>> for BenchConnection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}
