//! Transactional messages: EndTransaction, and the orphan checks that ask a producer about a
//! transaction whose outcome stays unknown (see `raftmq_storage::txn` for the state).
//!
//! Every node scans for due transactions: a node holding the Telemetry stream of the producer
//! that sent the half message (or of another producer of the topic) pushes it a
//! `RecoverOrphanedTransactionCommand`; the producer answers with EndTransaction. The check is
//! counted through Raft (`TransactionChecked`, once per check number however many nodes
//! report it), and the leader counts it even when no node could reach a producer, so a
//! transaction nobody resolves is rolled back after `transaction_max_checks` checks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2::{self as v2, Code};
use raftmq_storage::StoredRecord;
use tokio::sync::watch;

use super::messages::{now_ms, to_delivered};
use super::status::Rejection;
use super::{Broker, PROPOSE_DEADLINE};

/// Longest delay a half message may ask for before its first check (RocketMQ: 1 h).
pub const FIRST_CHECK_MAX: Duration = Duration::from_secs(3600);
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// How long after a check is due the leader counts it as tried, if no node pushed it.
const UNREACHABLE_GRACE_MS: i64 = 3_000;

/// When a half message is first checked: after its `orphaned_transaction_recovery_duration`,
/// or `default_delay` (the broker's `transaction_check_after_secs`).
pub fn first_check_ms(
    message: &v2::Message,
    store_ms: i64,
    default_delay: Duration,
) -> Result<i64, Rejection> {
    let requested = message
        .system_properties
        .as_ref()
        .and_then(|p| p.orphaned_transaction_recovery_duration.as_ref());
    let delay = match requested {
        None => default_delay,
        Some(d) => match Duration::try_from(*d) {
            Ok(d) if d <= FIRST_CHECK_MAX => d,
            _ => {
                return Err(Rejection::bad_request(format!(
                    "orphaned_transaction_recovery_duration must be within 0..={}s",
                    FIRST_CHECK_MAX.as_secs()
                )));
            }
        },
    };
    Ok(store_ms.saturating_add(delay.as_millis() as i64))
}

impl Broker {
    /// EndTransaction: commit or roll back a half message. An unspecified resolution (a
    /// checker that does not know yet) changes nothing.
    pub async fn end_transaction(
        &self,
        request: &v2::EndTransactionRequest,
    ) -> Result<(), Rejection> {
        let topic = super::consumer::valid_topic(request.topic.as_ref())?;
        if request.transaction_id.trim().is_empty() {
            return Err(Rejection::new(
                Code::InvalidTransactionId,
                "transaction_id must not be blank",
            ));
        }
        let commit = match v2::TransactionResolution::try_from(request.resolution) {
            Ok(v2::TransactionResolution::Commit) => true,
            Ok(v2::TransactionResolution::Rollback) => false,
            Ok(v2::TransactionResolution::Unspecified) => return Ok(()),
            Err(_) => {
                return Err(Rejection::bad_request(format!(
                    "unknown transaction resolution {}",
                    request.resolution
                )));
            }
        };
        let command = pb::Command {
            kind: Some(pb::command::Kind::EndTransaction(pb::EndTransaction {
                topic: topic.to_string(),
                transaction_id: request.transaction_id.clone(),
                commit,
            })),
        };
        match self.node.propose(command, PROPOSE_DEADLINE).await?.kind {
            Some(pb::command_result::Kind::Transaction(result)) if result.done => Ok(()),
            Some(pb::command_result::Kind::Transaction(result)) => {
                let why = match pb::TransactionState::try_from(result.state) {
                    Ok(pb::TransactionState::TransactionCommitted) => "it was already committed",
                    Ok(pb::TransactionState::TransactionRolledBack) => {
                        "it was already rolled back (by the producer or after too many checks)"
                    }
                    _ => "no transactional message has this id on this topic",
                };
                Err(Rejection::new(
                    Code::InvalidTransactionId,
                    format!("transaction `{}`: {why}", request.transaction_id),
                ))
            }
            other => Err(Rejection::internal(format!(
                "unexpected result of end transaction: {other:?}"
            ))),
        }
    }

    /// The check command for a pending transaction, its message filled as a delivered one.
    fn check_command(&self, record: &pb::TransactionRecord) -> Option<v2::TelemetryCommand> {
        let location = record.location.as_ref()?;
        let message = match self.node.state.read_location(location) {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "read a half message for its check");
                return None;
            }
        };
        let delivered = to_delivered(
            StoredRecord {
                queue_offset: 0,
                log_index: location.log_index,
                message,
            },
            &self.config.me().client_addr,
        );
        Some(v2::TelemetryCommand {
            status: Some(super::status::ok()),
            command: Some(
                v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                    v2::RecoverOrphanedTransactionCommand {
                        message: Some(delivered),
                        transaction_id: record.message_id.clone(),
                    },
                ),
            ),
        })
    }
}

/// Every node: ask producers about due transactions and count the checks.
pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    // (topic, transaction id, check number) this node already pushed.
    let mut pushed: HashSet<(String, String, u32)> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let now = now_ms();
        let due = match broker.node.state.transactions_due(now) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "scan pending transactions");
                continue;
            }
        };
        let is_leader = broker.node.metrics().current_leader == Some(broker.node.id);
        let mut still_due = HashSet::new();
        for record in due {
            let check = (
                record.topic.clone(),
                record.message_id.clone(),
                record.check_count,
            );
            still_due.insert(check.clone());
            let mut reported = false;
            if !pushed.contains(&check)
                && record.check_count < broker.config.transaction_max_checks
                && let Some(command) = broker.check_command(&record)
                && broker.clients.send_to_producer(
                    &record.producer_client_id,
                    &record.topic,
                    command,
                )
            {
                tracing::info!(
                    topic = %record.topic,
                    transaction_id = %record.message_id,
                    check = record.check_count + 1,
                    "asked a producer about a pending transaction"
                );
                pushed.insert(check);
                reported = true;
            }
            // The leader counts a check nobody could deliver, after giving the node that
            // holds the producer's stream time to push it.
            let unreachable = is_leader && now >= record.next_check_ms + UNREACHABLE_GRACE_MS;
            if reported || unreachable {
                let command = pb::Command {
                    kind: Some(pb::command::Kind::TransactionChecked(
                        pb::TransactionChecked {
                            topic: record.topic.clone(),
                            transaction_id: record.message_id.clone(),
                            check_count: record.check_count,
                            now_ms: now,
                            check_interval_ms: broker.config.transaction_check_interval.as_millis()
                                as i64,
                            max_checks: broker.config.transaction_max_checks,
                        },
                    )),
                };
                if let Err(e) = broker.node.propose(command, PROPOSE_DEADLINE).await {
                    tracing::warn!(error = %e, "count a transaction check");
                }
            }
        }
        pushed.retain(|check| still_due.contains(check));
    }
}
