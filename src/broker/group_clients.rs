//! The consumers of each group that this node has heard from: which client pulled, received,
//! acknowledged or committed on which topics, and how long ago.
//!
//! Operators see them in `admin group describe`, and a reset of a group's offsets is refused
//! while one of its pull consumers is online: a pull consumer keeps its position in memory and
//! would commit it again over the reset. Nothing here is replicated; each node knows the
//! clients that call it, and the admin service asks every member.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftmq_proto::rocketmq::v2;

/// A client silent for this long counts as gone: three of the official clients' 10 s
/// heartbeats. A client that says goodbye (NotifyClientTermination) is gone at once.
pub const ONLINE_WINDOW: Duration = Duration::from_secs(30);

/// How a consumer reads: pull consumers commit offsets themselves; simple and push consumers
/// receive and acknowledge, and the broker keeps their progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    Pull,
    Simple,
    Push,
}

impl ConsumerKind {
    pub fn name(self) -> &'static str {
        match self {
            ConsumerKind::Pull => "pull",
            ConsumerKind::Simple => "simple",
            ConsumerKind::Push => "push",
        }
    }

    /// The kind a Heartbeat declares; None for producers and unspecified clients.
    pub fn from_client_type(client_type: i32) -> Option<ConsumerKind> {
        use v2::ClientType;
        match ClientType::try_from(client_type).ok()? {
            ClientType::PullConsumer => Some(ConsumerKind::Pull),
            ClientType::SimpleConsumer | ClientType::LiteSimpleConsumer => {
                Some(ConsumerKind::Simple)
            }
            ClientType::PushConsumer | ClientType::LitePushConsumer => Some(ConsumerKind::Push),
            ClientType::Producer | ClientType::Unspecified => None,
        }
    }
}

/// What a call says about its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// PullMessage or UpdateOffset: only pull consumers make these.
    Pull,
    /// QueryAssignment, ReceiveMessage, AckMessage, ChangeInvisibleDuration: a simple or a
    /// push consumer (its Heartbeat tells which).
    Receive,
}

struct Seen {
    kind: Option<ConsumerKind>,
    topics: BTreeSet<String>,
    last: Instant,
}

impl Seen {
    fn online(&self, now: Instant, window: Duration) -> bool {
        now.duration_since(self.last) < window
    }
}

/// One client of a group, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineClient {
    pub group: String,
    pub client_id: String,
    pub kind: Option<ConsumerKind>,
    pub topics: Vec<String>,
    /// Time since this node last heard from it.
    pub idle: Duration,
}

pub struct GroupClients {
    window: Duration,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// By group, then by client id.
    groups: HashMap<String, HashMap<String, Seen>>,
    /// When silent clients were last dropped.
    swept: Option<Instant>,
}

impl Default for GroupClients {
    fn default() -> Self {
        GroupClients::new(ONLINE_WINDOW)
    }
}

impl GroupClients {
    pub fn new(window: Duration) -> GroupClients {
        GroupClients {
            window,
            registry: Mutex::default(),
        }
    }

    /// A call of `client` for `group` on `topic`.
    pub fn touched(&self, group: &str, client: &str, topic: &str, activity: Activity) {
        self.called(group, client, |seen| {
            match activity {
                Activity::Pull => seen.kind = Some(ConsumerKind::Pull),
                // A receive does not tell a simple consumer from a push consumer; keep what
                // the Heartbeat said.
                Activity::Receive => {
                    seen.kind.get_or_insert(ConsumerKind::Simple);
                }
            }
            if !seen.topics.contains(topic) {
                seen.topics.insert(topic.to_string());
            }
        });
    }

    /// A Heartbeat: the client is still there, and says what kind of consumer it is.
    pub fn heartbeat(&self, group: &str, client: &str, kind: ConsumerKind) {
        self.called(group, client, |seen| seen.kind = Some(kind));
    }

    /// NotifyClientTermination: the client is gone from `group`, or from every group when the
    /// call names none.
    pub fn terminated(&self, group: Option<&str>, client: &str) {
        let mut registry = self.registry.lock().expect("group clients poisoned");
        let groups = &mut registry.groups;
        match group {
            Some(group) => {
                if let Some(clients) = groups.get_mut(group) {
                    clients.remove(client);
                }
            }
            None => {
                for clients in groups.values_mut() {
                    clients.remove(client);
                }
            }
        }
        groups.retain(|_, clients| !clients.is_empty());
    }

    /// The clients of `group` (of every group: None) heard from within the window, by group
    /// and client id.
    pub fn online(&self, group: Option<&str>) -> Vec<OnlineClient> {
        let now = Instant::now();
        let registry = self.registry.lock().expect("group clients poisoned");
        let mut online: Vec<OnlineClient> = registry
            .groups
            .iter()
            .filter(|(name, _)| group.is_none_or(|group| group == name.as_str()))
            .flat_map(|(name, clients)| clients.iter().map(move |client| (name, client)))
            .filter(|(_, (_, seen))| seen.online(now, self.window))
            .map(|(name, (id, seen))| OnlineClient {
                group: name.clone(),
                client_id: id.clone(),
                kind: seen.kind,
                topics: seen.topics.iter().cloned().collect(),
                idle: now.duration_since(seen.last),
            })
            .collect();
        online.sort_by(|a, b| (&a.group, &a.client_id).cmp(&(&b.group, &b.client_id)));
        online
    }

    /// Record a call of `client` for `group` now, and let `update` say what it tells. A new
    /// client's first call drops the silent ones of every group, at most once per quarter
    /// window: the map holds no more than the clients heard from in the last window and a
    /// quarter, and a flood of new client ids costs one sweep per quarter window, not one per
    /// id.
    fn called(&self, group: &str, client: &str, update: impl FnOnce(&mut Seen)) {
        self.called_at(Instant::now(), group, client, update)
    }

    fn called_at(&self, now: Instant, group: &str, client: &str, update: impl FnOnce(&mut Seen)) {
        let window = self.window;
        let mut registry = self.registry.lock().expect("group clients poisoned");
        let known = registry
            .groups
            .get(group)
            .is_some_and(|clients| clients.contains_key(client));
        let sweep_due = registry
            .swept
            .is_none_or(|swept| now.duration_since(swept) >= window / 4);
        if !known {
            if sweep_due {
                registry.swept = Some(now);
                registry.groups.retain(|_, clients| {
                    clients.retain(|_, seen| seen.online(now, window));
                    !clients.is_empty()
                });
            }
            let seen = Seen {
                kind: None,
                topics: BTreeSet::new(),
                last: now,
            };
            let clients = registry.groups.entry(group.to_string()).or_default();
            clients.insert(client.to_string(), seen);
        }
        let seen = registry
            .groups
            .get_mut(group)
            .and_then(|clients| clients.get_mut(client))
            .expect("known or inserted above");
        seen.last = now;
        update(seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_say_what_kind_of_consumer_a_client_is() {
        let clients = GroupClients::default();
        clients.touched("g", "puller", "orders", Activity::Pull);
        clients.touched("g", "puller", "refunds", Activity::Pull);
        clients.touched("g", "receiver", "orders", Activity::Receive);
        clients.heartbeat("g", "pusher", ConsumerKind::Push);
        clients.touched("g", "pusher", "orders", Activity::Receive);
        clients.touched("other", "someone", "orders", Activity::Pull);

        let online = clients.online(Some("g"));
        let summary: Vec<_> = online
            .iter()
            .map(|c| (c.client_id.as_str(), c.kind, c.topics.join(",")))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("puller", Some(ConsumerKind::Pull), "orders,refunds".into()),
                ("pusher", Some(ConsumerKind::Push), "orders".into()),
                ("receiver", Some(ConsumerKind::Simple), "orders".into()),
            ]
        );
        assert!(clients.online(Some("nobody")).is_empty());
        let everywhere: Vec<_> = clients
            .online(None)
            .into_iter()
            .map(|c| (c.group, c.client_id))
            .collect();
        assert_eq!(everywhere.len(), 4);
        assert_eq!(everywhere[3], ("other".to_string(), "someone".to_string()));
    }

    #[test]
    fn a_client_that_says_goodbye_is_gone_at_once() {
        let clients = GroupClients::default();
        clients.touched("g", "a", "t", Activity::Pull);
        clients.touched("h", "a", "t", Activity::Pull);
        clients.touched("g", "b", "t", Activity::Pull);
        clients.terminated(Some("g"), "a");
        let ids = |group| -> Vec<String> {
            clients
                .online(Some(group))
                .into_iter()
                .map(|c| c.client_id)
                .collect()
        };
        assert_eq!(ids("g"), vec!["b"]);
        assert_eq!(ids("h"), vec!["a"], "only the group it named");
        clients.terminated(None, "a");
        assert!(ids("h").is_empty(), "every group when it names none");
    }

    #[test]
    fn a_silent_client_drops_out_after_the_window() {
        let clients = GroupClients::new(Duration::from_millis(50));
        clients.touched("g", "quiet", "t", Activity::Pull);
        assert_eq!(clients.online(Some("g")).len(), 1);
        std::thread::sleep(Duration::from_millis(80));
        assert!(clients.online(None).is_empty());
        // A new client's arrival prunes it from the map.
        clients.touched("g", "loud", "t", Activity::Pull);
        clients.touched("h", "x", "t", Activity::Pull);
        let registry = clients.registry.lock().unwrap();
        assert_eq!(registry.groups["g"].len(), 1);
        assert_eq!(registry.groups.len(), 2);
    }

    #[test]
    fn new_clients_sweep_out_the_silent_ones_at_most_once_per_quarter_window() {
        let clients = GroupClients::new(Duration::from_secs(40));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let tracked = || -> usize {
            let registry = clients.registry.lock().unwrap();
            registry.groups.values().map(HashMap::len).sum()
        };
        clients.called_at(at(0), "g", "early", |_| {});
        clients.called_at(at(5), "g", "later", |_| {});
        // "early" has been silent for a window: the next new client sweeps it out.
        clients.called_at(at(41), "g", "first-new", |_| {});
        assert_eq!(tracked(), 2);
        // "later" goes silent at 45, but the last sweep was under a quarter window ago.
        for (n, secs) in [46, 47, 48, 49, 50].into_iter().enumerate() {
            clients.called_at(at(secs), "h", &format!("flood-{n}"), |_| {});
        }
        assert_eq!(tracked(), 7);
        // A known client's call never sweeps.
        clients.called_at(at(60), "g", "first-new", |_| {});
        assert_eq!(tracked(), 7);
        clients.called_at(at(60), "h", "next-new", |_| {});
        assert_eq!(tracked(), 7, "later dropped, next-new added");
        let registry = clients.registry.lock().unwrap();
        assert!(!registry.groups["g"].contains_key("later"));
    }

    #[test]
    fn a_heartbeat_names_the_kind_for_every_consumer_type() {
        use v2::ClientType;
        for (client_type, kind) in [
            (ClientType::PullConsumer, Some(ConsumerKind::Pull)),
            (ClientType::SimpleConsumer, Some(ConsumerKind::Simple)),
            (ClientType::PushConsumer, Some(ConsumerKind::Push)),
            (ClientType::LitePushConsumer, Some(ConsumerKind::Push)),
            (ClientType::Producer, None),
            (ClientType::Unspecified, None),
        ] {
            assert_eq!(ConsumerKind::from_client_type(client_type as i32), kind);
        }
        assert_eq!(ConsumerKind::from_client_type(99), None);
    }
}
