//! The clients connected to this node through Telemetry streams, so the broker can push
//! commands to them (orphaned-transaction checks).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use raftmq_proto::rocketmq::v2;
use tokio::sync::mpsc;

pub type CommandSender = mpsc::Sender<Result<v2::TelemetryCommand, tonic::Status>>;

struct Session {
    sender: CommandSender,
    producer: bool,
    topics: HashSet<String>,
}

/// Streams by (client id, stream number): a client may hold several streams to one node (the
/// Rust client opens one per session, and stops reading some of them), so each is kept.
#[derive(Default)]
pub struct ClientRegistry {
    sessions: Mutex<HashMap<(String, u64), Session>>,
    next_stream: AtomicU64,
}

impl ClientRegistry {
    /// A number identifying one Telemetry stream.
    pub fn new_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Remember (or refresh) a client's stream and what its latest settings say.
    pub fn register(
        &self,
        client_id: &str,
        stream: u64,
        sender: &CommandSender,
        settings: &v2::Settings,
    ) {
        let (producer, topics) = match &settings.pub_sub {
            Some(v2::settings::PubSub::Publishing(publishing)) => (
                true,
                publishing.topics.iter().map(|t| t.name.clone()).collect(),
            ),
            _ => (false, HashSet::new()),
        };
        self.sessions
            .lock()
            .expect("client registry poisoned")
            .insert(
                (client_id.to_string(), stream),
                Session {
                    sender: sender.clone(),
                    producer,
                    topics,
                },
            );
    }

    /// Forget a stream when it ends.
    pub fn unregister(&self, client_id: &str, stream: u64) {
        self.sessions
            .lock()
            .expect("client registry poisoned")
            .remove(&(client_id.to_string(), stream));
    }

    /// Push a command on every stream of `preferred` connected here (a client may no longer
    /// read some of them; a repeated check is harmless), otherwise to one producer that
    /// publishes `topic`, otherwise to any producer (a Rust producer lists only some topics).
    /// Returns whether some stream took it.
    pub fn send_to_producer(
        &self,
        preferred: &str,
        topic: &str,
        command: v2::TelemetryCommand,
    ) -> bool {
        let sessions = self.sessions.lock().expect("client registry poisoned");
        let send = |session: &Session| session.sender.try_send(Ok(command.clone())).is_ok();
        let mut sent_to_preferred = false;
        for ((client_id, _), session) in sessions.iter() {
            if client_id == preferred {
                sent_to_preferred |= send(session);
            }
        }
        sent_to_preferred
            || sessions
                .values()
                .filter(|s| s.producer && s.topics.contains(topic))
                .any(send)
            || sessions.values().filter(|s| s.producer).any(send)
    }

    /// Whether `client_id` has a Telemetry stream on this node.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("client registry poisoned")
            .keys()
            .any(|(id, _)| id == client_id)
    }
}
