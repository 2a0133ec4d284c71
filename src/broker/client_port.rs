//! The client port: the RocketMQ MessagingService and raftmq's AdminService over HTTP/2.
//!
//! Each accepted connection is served by hyper with the two generated tonic services behind a
//! match on the path's service name. tonic's `Server` wraps every call in a per-connection
//! stack (a boxed clone of the stack per call, a connect-info extension, an axum router);
//! here a call costs one path comparison before the generated service decodes it.
//! SendMessage, one call per message for most producers, skips tonic's codec too: it is
//! decoded and answered by `unary.rs` and handled by the same service method.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use raftmq_proto::admin::v1::admin_service_server::AdminServiceServer;
use raftmq_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use std::sync::Arc;
use tower_service::Service;

use super::admin::Admin;
use super::messaging::{self, Messaging};
use super::{MAX_CLIENT_MESSAGE_BYTES, unary};

/// The services of the client port, routed by the service name in the call's path.
#[derive(Clone)]
pub struct ClientApi {
    /// The connection's peer, shown for a client that sends no client id (see
    /// `admin group describe`); set per connection.
    peer: Option<std::net::SocketAddr>,
    /// SendMessage's handler, called without tonic's codec (see `unary.rs`).
    sends: Arc<Messaging>,
    messaging: MessagingServiceServer<Messaging>,
    admin: AdminServiceServer<Admin>,
}

impl ClientApi {
    pub fn new(messaging: Arc<Messaging>, admin: AdminServiceServer<Admin>) -> ClientApi {
        ClientApi {
            peer: None,
            sends: messaging.clone(),
            messaging: messaging::service(messaging),
            admin,
        }
    }
}

const ADMIN_PATH: &str = "/raftmq.admin.v1.AdminService/";
const SEND_MESSAGE_PATH: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

/// hyper's own service trait, called by shared reference: a tower service would be cloned
/// for every call (hyper's tower adapter does so), the whole routing table with it.
impl hyper::service::Service<http::Request<Incoming>> for ClientApi {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: http::Request<Incoming>) -> ResponseFuture {
        // Anything that is not an admin call goes to MessagingService, which answers an
        // unknown method with UNIMPLEMENTED.
        let path = request.uri().path();
        if path == SEND_MESSAGE_PATH && unary::is_plain_grpc(request.headers()) {
            let sends = self.sends.clone();
            Box::pin(async move {
                let response =
                    unary::serve(request, MAX_CLIENT_MESSAGE_BYTES, |request| async move {
                        sends.send_message(request).await
                    })
                    .await;
                Ok(response)
            })
        } else if path.starts_with(ADMIN_PATH) {
            // The generated tonic services are always ready; they take `&mut self`.
            self.admin.clone().call(request)
        } else {
            // Where tonic's own server would put it, for `Request::remote_addr`. SendMessage
            // goes without: its callers are not listed.
            let mut request = request;
            request
                .extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: self.peer,
                });
            self.messaging.clone().call(request)
        }
    }
}

/// Serve `api` on `listener` until `shutdown` resolves, then let open calls finish. While
/// `cut_off` is true, connections are closed as soon as they are accepted, and those already
/// open are closed with their calls (see `cut_off.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: ClientApi,
    cut_off: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // As tonic's server: no cap on calls in flight per connection (hyper's default is 200,
    // and one client connection carries every call of a busy producer).
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(None);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %err, "accepting a client connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if *cut_off.borrow() {
            // Closed before any HTTP/2 settings: a gRPC client counts the address as failed
            // and tries the next one.
            tracing::debug!(%peer, "refused a client connection: this node is cut off");
            continue;
        }
        // Nagle's algorithm would hold small replies back until the client's delayed ACK.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY on a client connection");
        }
        let mut connection_api = api.clone();
        connection_api.peer = Some(peer);
        let connection = builder.serve_connection(TokioIo::new(stream), connection_api);
        let connection = graceful.watch(connection);
        let mut cut_off = cut_off.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(err) = ended {
                    tracing::debug!(error = %err, "client connection ended with an error");
                },
                // Dropping the connection closes it; its calls fail at the client, which
                // retries them elsewhere.
                Ok(_) = cut_off.wait_for(|cut| *cut) => {
                    tracing::debug!(%peer, "closed a client connection: this node is cut off");
                }
            }
        });
    }
    graceful.shutdown().await;
}
