//! The clients connected to this node through Telemetry streams, so the broker can push
//! commands to them (orphaned-transaction checks).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use raftmq_proto::rocketmq::v2;
use tokio::sync::mpsc;

pub type CommandSender = mpsc::Sender<Result<v2::TelemetryCommand, tonic::Status>>;

struct Session {
    stream: u64,
    sender: CommandSender,
    producer: bool,
    topics: HashSet<String>,
}

#[derive(Default)]
pub struct ClientRegistry {
    sessions: Mutex<HashMap<String, Session>>,
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
                client_id.to_string(),
                Session {
                    stream,
                    sender: sender.clone(),
                    producer,
                    topics,
                },
            );
    }

    /// Forget a client when its stream ends (unless it opened a newer one meanwhile).
    pub fn unregister(&self, client_id: &str, stream: u64) {
        let mut sessions = self.sessions.lock().expect("client registry poisoned");
        if sessions.get(client_id).is_some_and(|s| s.stream == stream) {
            sessions.remove(client_id);
        }
    }

    /// Push a command to `preferred` if it is connected here, otherwise to a producer that
    /// publishes `topic` (or any producer, since a Rust producer lists only some topics).
    /// Returns whether some client took it.
    pub fn send_to_producer(
        &self,
        preferred: &str,
        topic: &str,
        command: v2::TelemetryCommand,
    ) -> bool {
        let sessions = self.sessions.lock().expect("client registry poisoned");
        let mut candidates: Vec<&Session> = sessions.get(preferred).into_iter().collect();
        candidates.extend(
            sessions
                .values()
                .filter(|s| s.producer && s.topics.contains(topic)),
        );
        candidates.extend(sessions.values().filter(|s| s.producer));
        candidates
            .into_iter()
            .any(|session| session.sender.try_send(Ok(command.clone())).is_ok())
    }

    /// Whether `client_id` has a Telemetry stream on this node.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("client registry poisoned")
            .contains_key(client_id)
    }
}
