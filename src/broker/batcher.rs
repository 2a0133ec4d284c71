//! Coalesces concurrent sends into shared Raft entries.
//!
//! Every Raft entry costs the leader a fixed amount of work (openraft bookkeeping, one log
//! record, one replication message per follower, one apply) whatever it carries. Sends that
//! arrive while earlier entries are still being replicated are therefore packed into one
//! `AppendMessages` command, up to a size limit, and each caller gets back its own slice of
//! the result. At most `MAX_IN_FLIGHT` combined entries are proposed at a time: while they are
//! busy, new sends queue up and form the next, larger, entry. A lone send under light load is
//! proposed at once, so batching adds no latency.
//!
//! The sends a node holds (queued here or being committed) are bounded in bytes: past the
//! budget a send is refused at once with TOO_MANY_REQUESTS, RocketMQ's "broker busy", so that a
//! flood of producers, or a group that cannot commit, backs clients off instead of growing the
//! node's memory until it is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prost::Message as _;
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2::Code;
use raftmq_raft::{ProposeError, RaftNode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::PROPOSE_DEADLINE;
use super::status::Rejection;

/// Combined entries being replicated at once. openraft pipelines them (the log, each follower
/// and the fsyncs overlap), so a few more than the stages of that pipeline keep it busy; with
/// 4, a send at 16 in flight waited for a free slot about as long as for its commit.
const MAX_IN_FLIGHT: usize = 16;
/// Upper bound of the bodies packed into one entry; a single larger send still goes alone.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Upper bound of the messages packed into one entry.
const MAX_BATCH_MESSAGES: usize = 2048;

type Reply = oneshot::Sender<Result<Vec<pb::AppendedMessage>, ProposeError>>;

struct PendingSend {
    messages: Vec<pb::StoredMessage>,
    reply: Reply,
    queued: Instant,
    /// This send's share of the byte budget, given back once its proposal has ended (also when
    /// the caller gave up waiting: the messages are held until then all the same).
    budget: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct SendBatcher {
    queue: mpsc::UnboundedSender<PendingSend>,
    /// One permit per byte of the sends this node holds.
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// Set from a refusal for want of budget until the budget is half free again: the start and
    /// the end of a busy spell are logged once each.
    refusing: Arc<AtomicBool>,
}

impl SendBatcher {
    /// `budget_bytes`: the most bytes of messages held at once, queued or being committed.
    pub fn start(node: Arc<RaftNode>, budget_bytes: usize) -> SendBatcher {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(node, pending));
        SendBatcher {
            queue,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            refusing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Bytes of messages held now, queued or being committed.
    pub fn pending_bytes(&self) -> usize {
        self.budget_bytes
            .saturating_sub(self.budget.available_permits())
    }

    /// Store `messages` (one client request); returns one result per message, in order.
    pub async fn append(
        &self,
        messages: Vec<pb::StoredMessage>,
    ) -> Result<Vec<pb::AppendedMessage>, Rejection> {
        let budget = self.reserve(&messages)?;
        let (reply, result) = oneshot::channel();
        let shutting_down =
            || Rejection::from(ProposeError::Fatal("the broker is shutting down".into()));
        self.queue
            .send(PendingSend {
                messages,
                reply,
                queued: Instant::now(),
                budget,
            })
            .map_err(|_| shutting_down())?;
        let outcome = result.await.map_err(|_| shutting_down())?;
        outcome.map_err(Rejection::from)
    }

    /// Take `messages`' bytes from the budget, or refuse them now: waiting would hold their
    /// memory all the same.
    fn reserve(&self, messages: &[pb::StoredMessage]) -> Result<OwnedSemaphorePermit, Rejection> {
        let bytes: usize = messages.iter().map(|m| m.encoded_len()).sum();
        let too_large = || {
            Rejection::new(
                Code::PayloadTooLarge,
                format!(
                    "this request carries {bytes} bytes of messages; a node holds at most {} \
                     bytes of sends at once (max_pending_send_mb)",
                    self.budget_bytes
                ),
            )
        };
        let permits = u32::try_from(bytes).map_err(|_| too_large())?;
        if bytes > self.budget_bytes {
            return Err(too_large());
        }
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                // Half empty again before the end is logged: a backlog that stays near the limit
                // refuses now and then, and would otherwise log a pair of lines each time.
                if self.refusing.load(Ordering::Relaxed)
                    && self.pending_bytes() <= self.budget_bytes / 2
                    && self.refusing.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(
                        "sends are taken again: the sends this node holds fit in max_pending_send_mb"
                    );
                }
                Ok(permit)
            }
            Err(_) => {
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        pending_bytes = self.pending_bytes(),
                        limit_bytes = self.budget_bytes,
                        "broker busy: sends are refused (TOO_MANY_REQUESTS) while this node holds \
                         max_pending_send_mb of sends not yet committed"
                    );
                }
                Err(Rejection::new(
                    Code::TooManyRequests,
                    format!(
                        "broker busy: {} bytes of sends are waiting to be committed, and {bytes} \
                         more would pass this node's limit of {} (max_pending_send_mb); retry later",
                        self.pending_bytes(),
                        self.budget_bytes
                    ),
                ))
            }
        }
    }
}

async fn run(node: Arc<RaftNode>, mut pending: mpsc::UnboundedReceiver<PendingSend>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<PendingSend> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(send) => send,
            None => match pending.recv().await {
                Some(send) => send,
                None => return,
            },
        };
        let mut bytes = body_bytes(&first.messages);
        let mut count = first.messages.len();
        let mut batch = vec![first];
        while let Ok(next) = pending.try_recv() {
            let next_bytes = body_bytes(&next.messages);
            if bytes + next_bytes > MAX_BATCH_BYTES
                || count + next.messages.len() > MAX_BATCH_MESSAGES
            {
                carried = Some(next);
                break;
            }
            bytes += next_bytes;
            count += next.messages.len();
            batch.push(next);
        }
        let node = node.clone();
        tokio::spawn(async move {
            propose_batch(&node, batch).await;
            drop(slot);
        });
    }
}

fn body_bytes(messages: &[pb::StoredMessage]) -> usize {
    messages.iter().map(|m| m.body.len()).sum()
}

async fn propose_batch(node: &RaftNode, batch: Vec<PendingSend>) {
    let mut sizes = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    // Held until the callers have their answers.
    let mut budgets = Vec::with_capacity(batch.len());
    let mut messages = Vec::new();
    let proposed = Instant::now();
    // How long sends wait for a free slot and the batch they ride in.
    let batch_wait = metrics::histogram!("raftmq_send_batch_wait_seconds");
    for send in batch {
        batch_wait.record(proposed.duration_since(send.queued).as_secs_f64());
        sizes.push(send.messages.len());
        messages.extend(send.messages);
        replies.push(send.reply);
        budgets.push(send.budget);
    }
    let command = pb::Command {
        kind: Some(pb::command::Kind::Append(pb::AppendMessages { messages })),
    };
    let outcome = match node.propose(command, PROPOSE_DEADLINE).await {
        Ok(pb::CommandResult {
            kind: Some(pb::command_result::Kind::Append(result)),
        }) if result.messages.len() == sizes.iter().sum::<usize>() => Ok(result.messages),
        Ok(other) => Err(ProposeError::Fatal(format!(
            "unexpected result of a send: {other:?}"
        ))),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(appended) => {
            // Hand each caller its own results, front to back (one pass: splitting the front
            // off a vector would move the rest once per caller).
            let mut appended = appended.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(appended.by_ref().take(size).collect()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    drop(budgets);
}
