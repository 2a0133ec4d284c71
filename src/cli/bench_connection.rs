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
//! error, or no reply within the call's timeout, fails the call (the bench counts it as
//! failed); nothing is retried, but a [`LeaderConnection`] moves to the new leader when its
//! node goes away or stops answering.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};

use crate::client::Client;

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
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
}

impl CallError {
    /// The connection itself is gone (its node was killed or stopped), not only this call.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, CallError::Http2(e) if e.is_io() || e.is_go_away())
    }
}

#[derive(Clone)]
pub struct BenchConnection {
    sender: h2::client::SendRequest<Bytes>,
    /// The node's `host:port`, in each call's URI.
    authority: Authority,
    /// The `grpc-timeout` every call carries, as tonic's clients send it.
    timeout_header: HeaderValue,
    /// The same timeout, kept by this end too: a node that cannot answer (paused, cut off)
    /// cannot enforce it either.
    timeout: Duration,
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
        let timeout_header = HeaderValue::from_str(&format!("{}m", timeout.as_millis().max(1)))
            .context("grpc-timeout header")?;
        Ok(BenchConnection {
            sender,
            authority,
            timeout_header,
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
        tokio::time::timeout(self.timeout, self.call_unbounded(path, frame))
            .await
            .map_err(|_| CallError::TimedOut(self.timeout))?
    }

    async fn call_unbounded(&self, path: &'static str, frame: Bytes) -> Result<Bytes, CallError> {
        let uri = http::Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| CallError::Request(e.to_string()))?;
        let head = http::Request::post(uri)
            .header(CONTENT_TYPE, APPLICATION_GRPC)
            .header(TE, TRAILERS)
            .header(GRPC_TIMEOUT, self.timeout_header.clone())
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

/// How long a [`LeaderConnection`] waits for the group to name a new leader before it settles
/// for any node that answers (a follower forwards each send to the leader, one hop more).
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// After a search that found no node, the calls failing meanwhile do not search again before
/// this: they fail at once, and the run still ends on time.
const SEARCH_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// A [`BenchConnection`] to the group's leader that follows it. The first call to find the
/// connection lost (its node killed or stopped) moves it to the node the group names leader,
/// or after [`LEADER_WAIT`] to any node that answers. A call that times out moves it only if
/// the group names another node leader (its node paused or cut off, a new leader elected);
/// a slow leader keeps its callers. The calls that fail meanwhile count as failed, so a run
/// through a failover measures the gap instead of failing every later call.
pub struct LeaderConnection {
    client: Arc<Client>,
    /// Behind an `Arc`: each call takes a reference, not a copy of the connection.
    current: RwLock<Arc<Current>>,
    /// One search at a time: the calls that failed with the same connection wait for it.
    /// Holds when the last search that moved nothing ended.
    moving: tokio::sync::Mutex<Option<Instant>>,
}

/// Why a call on the current connection failed, as far as moving it goes.
#[derive(Clone, Copy)]
enum Failure {
    /// The connection is gone: its node was killed or stopped.
    Lost,
    /// No reply in time: its node may be paused or cut off, or only slow.
    Unanswered,
}

struct Current {
    connection: BenchConnection,
    endpoint: String,
    /// Counts the moves, so that a call that failed on an older connection moves nothing.
    generation: u64,
}

impl LeaderConnection {
    /// Connect to the client's first endpoint (the caller puts the leader first).
    pub async fn connect(client: Arc<Client>) -> anyhow::Result<LeaderConnection> {
        let endpoint = client
            .endpoints()
            .first()
            .context("no endpoint to connect to")?
            .clone();
        let connection = BenchConnection::connect(&endpoint, client.timeout).await?;
        Ok(LeaderConnection {
            client,
            current: RwLock::new(Arc::new(Current {
                connection,
                endpoint,
                generation: 0,
            })),
            moving: tokio::sync::Mutex::new(None),
        })
    }

    /// [`BenchConnection::unary`] on the current connection; a lost or unanswering connection
    /// is replaced before the error is returned.
    pub async fn unary<Request: prost::Message, Reply: prost::Message + Default>(
        &self,
        path: &'static str,
        request: &Request,
    ) -> Result<Reply, CallError> {
        let current = self.current.read().expect("connection lock").clone();
        let result = current.connection.unary(path, request).await;
        match &result {
            Err(err) if err.is_connection_lost() => {
                self.move_on(&current, err, Failure::Lost).await
            }
            Err(err @ CallError::TimedOut(_)) => {
                self.move_on(&current, err, Failure::Unanswered).await
            }
            _ => {}
        }
        result
    }

    /// Move away from `failed`: to the leader, or when its node is gone to any node that
    /// answers. When it only did not answer in time, only another leader will do.
    async fn move_on(&self, failed: &Current, err: &CallError, failure: Failure) {
        let mut searched_in_vain_at = self.moving.lock().await;
        if self.current.read().expect("connection lock").generation != failed.generation {
            return; // another call has moved it already
        }
        if searched_in_vain_at.is_some_and(|at| at.elapsed() < SEARCH_AGAIN_AFTER) {
            return;
        }
        let found = match failure {
            Failure::Lost => self.find_a_node().await,
            Failure::Unanswered => self.find_another_leader(&failed.endpoint).await,
        };
        let Some((connection, endpoint, how)) = found else {
            // A call failing later tries again.
            if let (Failure::Lost, None) = (failure, *searched_in_vain_at) {
                eprintln!(
                    "connection to {} lost ({err}); no node answers yet",
                    failed.endpoint
                );
            }
            *searched_in_vain_at = Some(Instant::now());
            return;
        };
        let what = match failure {
            Failure::Lost => "lost",
            Failure::Unanswered => "not answering",
        };
        eprintln!(
            "connection to {} {what} ({err}); now sending to {endpoint} ({how})",
            failed.endpoint
        );
        *searched_in_vain_at = None;
        *self.current.write().expect("connection lock") = Arc::new(Current {
            connection,
            endpoint,
            generation: failed.generation + 1,
        });
    }

    /// A connection to the node the group names leader, if that is not `endpoint`.
    async fn find_another_leader(
        &self,
        endpoint: &str,
    ) -> Option<(BenchConnection, String, &'static str)> {
        let leader = self.client.leader_endpoint().await?;
        if leader == endpoint {
            return None;
        }
        let connection = self.connect_to(&leader).await.ok()?;
        Some((connection, leader, "the new leader"))
    }

    /// A connection to the node the group names leader, waiting up to [`LEADER_WAIT`] for one;
    /// then to the first node that answers. Says which of the two it found.
    async fn find_a_node(&self) -> Option<(BenchConnection, String, &'static str)> {
        let give_up = Instant::now() + LEADER_WAIT;
        while Instant::now() < give_up {
            if let Some(leader) = self.client.leader_endpoint().await
                && let Ok(connection) = self.connect_to(&leader).await
            {
                return Some((connection, leader, "the leader"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for endpoint in self.client.endpoints() {
            if let Ok(connection) = self.connect_to(endpoint).await {
                return Some((connection, endpoint.clone(), "no leader named; it forwards"));
            }
        }
        None
    }

    /// A connection that gives up as soon as a call would (a node cut off does not answer).
    async fn connect_to(&self, endpoint: &str) -> anyhow::Result<BenchConnection> {
        tokio::time::timeout(
            self.client.timeout,
            BenchConnection::connect(endpoint, self.client.timeout),
        )
        .await
        .context("connect timed out")?
    }
}
