//! What producers were told, what the replicas hold, and the checks between the two.
//!
//! Every message body is unique (`producer:sequence`), so a message read back is matched to
//! its send without trusting the broker's ids. Ordering is checked against real time: if the
//! send of B started after A was acknowledged and both landed in the same queue, A must sit
//! at a lower offset than B.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmq::client::{Client, ClientError, message};

/// One acknowledged send.
#[derive(Debug, Clone)]
pub struct Ack {
    pub body: String,
    pub message_id: String,
    pub offset: u64,
    /// Logical clock reading when the send started and when its acknowledgement arrived.
    pub started: u64,
    pub acked: u64,
}

/// A message as read from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub queue_id: i32,
    pub offset: u64,
    pub message_id: String,
    pub body: String,
}

#[derive(Default)]
pub struct History {
    clock: AtomicU64,
    acks: Mutex<Vec<Ack>>,
    /// Sends that never got an answer: they may or may not have been stored.
    unknown: Mutex<Vec<String>>,
    /// Sends the broker refused on their only attempt because the group has no disk room
    /// (TOO_MANY_REQUESTS): never stored, so one read back is a phantom.
    refused: Mutex<Vec<String>>,
}

/// The broker's answer when the group has no disk space for new messages, to a send none of
/// whose attempts can have been stored.
pub fn is_refused_for_room(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Rejected {
            code: raftmq_proto::rocketmq::v2::Code::TooManyRequests,
            after_unanswered: false,
            ..
        }
    )
}

impl History {
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    pub fn unknown(&self) -> Vec<String> {
        self.unknown.lock().unwrap().clone()
    }

    pub fn refused(&self) -> usize {
        self.refused.lock().unwrap().len()
    }

    /// Send `{prefix}:0` .. `{prefix}:{count - 1}` one after another, each retried (same
    /// message id) until acknowledged or `give_up` passes.
    pub async fn send_numbered(
        &self,
        client: &Client,
        topic: &str,
        prefix: &str,
        count: usize,
        give_up: Duration,
    ) -> Result<(), ClientError> {
        for seq in 0..count {
            self.send_until_acked(client, topic, format!("{prefix}:{seq}"), give_up)
                .await?;
        }
        Ok(())
    }

    /// Send `body` to `topic`, retrying with the same message id until it is acknowledged
    /// or `give_up` passes. Retries may reach a different node and a different leader.
    pub async fn send_until_acked(
        &self,
        client: &Client,
        topic: &str,
        body: String,
        give_up: Duration,
    ) -> Result<Ack, ClientError> {
        let msg = message(topic, body.clone().into_bytes(), Some("chaos"), &[]);
        let message_id = msg
            .system_properties
            .as_ref()
            .map(|p| p.message_id.clone())
            .unwrap_or_default();
        let deadline = Instant::now() + give_up;
        let started = self.tick();
        let mut first_attempt = true;
        loop {
            let result = client.send(vec![msg.clone()]).await;
            let this_attempt_was_first = std::mem::replace(&mut first_attempt, false);
            match result {
                Ok(entries) => {
                    let offset = entries
                        .first()
                        .map(|e| e.offset.max(0) as u64)
                        .unwrap_or_default();
                    let ack = Ack {
                        body,
                        message_id,
                        offset,
                        started,
                        acked: self.tick(),
                    };
                    self.acks.lock().unwrap().push(ack.clone());
                    return Ok(ack);
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    // The retry keeps the message id: the broker must deduplicate it if the
                    // first attempt did land.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) if this_attempt_was_first && is_refused_for_room(&e) => {
                    self.refused.lock().unwrap().push(body);
                    return Err(e);
                }
                Err(e) => {
                    self.unknown.lock().unwrap().push(body);
                    return Err(e);
                }
            }
        }
    }
}

/// Read every queue of `topic` from offset 0 on the node `client` talks to.
pub async fn read_topic(
    client: &Client,
    topic: &str,
    queues: i32,
) -> Result<Vec<Stored>, ClientError> {
    let mut out = Vec::new();
    for queue_id in 0..queues {
        let mut offset = 0u64;
        loop {
            let (messages, next) = client
                .pull(
                    "chaos-checker",
                    topic,
                    queue_id,
                    offset,
                    256,
                    Duration::ZERO,
                )
                .await?;
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let props = m.system_properties.unwrap_or_default();
                out.push(Stored {
                    queue_id: props.queue_id,
                    offset: props.queue_offset.unwrap_or(-1).max(-1) as u64,
                    message_id: props.message_id,
                    body: String::from_utf8_lossy(&m.body).into_owned(),
                });
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
    }
    Ok(out)
}

/// Findings of one check; a correct broker yields `lost`, `duplicated`, `reordered`,
/// `phantom` and `wrong_offset` all empty.
#[derive(Debug, Default)]
pub struct Report {
    pub acknowledged: usize,
    pub stored: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub reordered: Vec<(String, String)>,
    pub phantom: Vec<String>,
    pub wrong_offset: Vec<String>,
    pub unknown_present: usize,
    pub offset_gaps: Vec<(i32, u64)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.phantom.is_empty()
            && self.wrong_offset.is_empty()
            && self.offset_gaps.is_empty()
    }
}

/// Compare what was acknowledged with what one replica holds.
pub fn check(acks: &[Ack], unknown: &[String], stored: &[Stored]) -> Report {
    let mut report = Report {
        acknowledged: acks.len(),
        stored: stored.len(),
        ..Default::default()
    };
    let mut by_body: HashMap<&str, Vec<&Stored>> = HashMap::new();
    for s in stored {
        by_body.entry(s.body.as_str()).or_default().push(s);
    }
    let acked_bodies: HashMap<&str, &Ack> = acks.iter().map(|a| (a.body.as_str(), a)).collect();
    let unknown: std::collections::HashSet<&str> = unknown.iter().map(String::as_str).collect();

    for (body, copies) in &by_body {
        if copies.len() > 1 {
            report.duplicated.push(body.to_string());
        }
        if !acked_bodies.contains_key(body) {
            if unknown.contains(body) {
                report.unknown_present += 1;
            } else {
                report.phantom.push(body.to_string());
            }
        }
    }

    // Each acknowledged message, where it was stored, and its send/ack clock readings.
    let mut per_queue: BTreeMap<i32, Vec<(u64, &Ack)>> = BTreeMap::new();
    for ack in acks {
        match by_body.get(ack.body.as_str()) {
            None => report.lost.push(ack.body.clone()),
            Some(copies) => {
                let first = copies[0];
                if first.offset != ack.offset {
                    report.wrong_offset.push(format!(
                        "{}: acknowledged at offset {}, stored at {}",
                        ack.body, ack.offset, first.offset
                    ));
                }
                per_queue
                    .entry(first.queue_id)
                    .or_default()
                    .push((first.offset, ack));
            }
        }
    }

    // Walk each queue from the highest offset down, remembering the earliest acknowledgement
    // seen so far: a message whose send started after that acknowledgement sits too low.
    for entries in per_queue.values_mut() {
        entries.sort_by_key(|(offset, _)| *offset);
        let mut earliest_ack_above: Option<&Ack> = None;
        for (_, ack) in entries.iter().rev() {
            if let Some(above) = earliest_ack_above
                && above.acked < ack.started
            {
                report
                    .reordered
                    .push((above.body.clone(), ack.body.clone()));
            }
            if earliest_ack_above.is_none_or(|a| ack.acked < a.acked) {
                earliest_ack_above = Some(ack);
            }
        }
    }

    // Offsets of a queue are dense from 0.
    let mut offsets: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for s in stored {
        offsets.entry(s.queue_id).or_default().push(s.offset);
    }
    for (queue, mut list) in offsets {
        list.sort_unstable();
        for (expected, actual) in list.iter().enumerate() {
            if *actual != expected as u64 {
                report.offset_gaps.push((queue, expected as u64));
                break;
            }
        }
    }
    report
}

/// `a` and `b` hold the same messages at the same places.
pub fn replicas_identical(a: &[Stored], b: &[Stored]) -> bool {
    let sorted = |list: &[Stored]| {
        let mut v: Vec<(i32, u64, String, String)> = list
            .iter()
            .map(|s| (s.queue_id, s.offset, s.message_id.clone(), s.body.clone()))
            .collect();
        v.sort();
        v
    };
    sorted(a) == sorted(b)
}

/// Collect the stored messages of every running node and check each against the history.
pub async fn check_every_node(
    cluster: &crate::cluster::Cluster,
    history: &History,
    topic: &str,
    queues: i32,
) -> anyhow::Result<Vec<Stored>> {
    let acks = history.acks();
    let unknown = history.unknown();
    let mut first: Option<(u64, Vec<Stored>)> = None;
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let stored = read_topic(&cluster.node_client(node.id), topic, queues).await?;
        let report = check(&acks, &unknown, &stored);
        anyhow::ensure!(
            report.is_clean(),
            "node {}: {} acknowledged, {} stored; lost {:?}; duplicated {:?}; reordered {:?}; phantom {:?}; wrong offset {:?}; gaps {:?}",
            node.id,
            report.acknowledged,
            report.stored,
            head(&report.lost),
            head(&report.duplicated),
            head(&report.reordered),
            head(&report.phantom),
            head(&report.wrong_offset),
            report.offset_gaps
        );
        match &first {
            None => first = Some((node.id, stored)),
            Some((first_id, first_stored)) => anyhow::ensure!(
                replicas_identical(first_stored, &stored),
                "node {} and node {} hold different messages ({} vs {})",
                first_id,
                node.id,
                first_stored.len(),
                stored.len()
            ),
        }
    }
    Ok(first.map(|(_, s)| s).unwrap_or_default())
}

fn head<T: Clone>(list: &[T]) -> Vec<T> {
    list.iter().take(5).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(body: &str, offset: u64, started: u64, acked: u64) -> Ack {
        Ack {
            body: body.into(),
            message_id: format!("id-{body}"),
            offset,
            started,
            acked,
        }
    }

    fn stored(queue_id: i32, offset: u64, body: &str) -> Stored {
        Stored {
            queue_id,
            offset,
            message_id: format!("id-{body}"),
            body: body.into(),
        }
    }

    #[test]
    fn a_faithful_replica_is_clean() {
        let acks = [ack("a", 0, 0, 1), ack("b", 1, 2, 3), ack("c", 0, 2, 4)];
        let held = [stored(0, 0, "a"), stored(0, 1, "b"), stored(1, 0, "c")];
        assert!(check(&acks, &[], &held).is_clean());
    }

    #[test]
    fn each_kind_of_fault_is_reported() {
        let acks = [ack("a", 0, 0, 1), ack("b", 1, 2, 3), ack("lost", 2, 4, 5)];
        // b stored before a although a was acknowledged before b's send started.
        let held = [
            stored(0, 0, "b"),
            stored(0, 1, "a"),
            stored(0, 2, "a"),
            stored(0, 3, "ghost"),
        ];
        let report = check(&acks, &[], &held);
        assert_eq!(report.lost, vec!["lost".to_string()]);
        assert_eq!(report.duplicated, vec!["a".to_string()]);
        assert_eq!(report.phantom, vec!["ghost".to_string()]);
        assert_eq!(report.reordered, vec![("a".to_string(), "b".to_string())]);
        assert_eq!(report.wrong_offset.len(), 2);
        assert!(!report.is_clean());
    }

    #[test]
    fn concurrent_sends_may_land_in_either_order() {
        // Both sends were in flight together: any order is correct.
        let acks = [ack("a", 1, 0, 3), ack("b", 0, 1, 2)];
        let held = [stored(0, 0, "b"), stored(0, 1, "a")];
        assert!(check(&acks, &[], &held).is_clean());
    }

    #[test]
    fn unknown_sends_may_or_may_not_appear() {
        let held = [stored(0, 0, "maybe")];
        let report = check(&[], &["maybe".to_string()], &held);
        assert!(report.is_clean());
        assert_eq!(report.unknown_present, 1);
    }

    #[test]
    fn a_gap_in_offsets_is_reported() {
        let held = [stored(0, 0, "a"), stored(0, 2, "b")];
        let acks = [ack("a", 0, 0, 1), ack("b", 2, 2, 3)];
        assert_eq!(check(&acks, &[], &held).offset_gaps, vec![(0, 1)]);
    }
}
