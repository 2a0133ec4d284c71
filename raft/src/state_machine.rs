//! openraft's `RaftStateMachine` over the derived broker state.
//!
//! A snapshot is the serialized derived state (topics, consume queues, offsets, dedup index).
//! Messages stay in the log: the log is never purged by snapshots
//! (`max_in_snapshot_log_to_keep = u64::MAX`), so a follower, even one with an empty disk,
//! catches up by plain log replication and ends with every message the leader retains.
//!
//! A snapshot is made only when one is asked for: a node offers none until it has built or
//! installed one, so that a restart does not read the whole derived state, which grows with
//! every message stored (one consume-queue entry each), only to be asked whether it has one.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use raftmq_storage::{ApplyItem, BrokerState, StateExport};

use crate::convert::{
    log_id_to_pb, membership_to_pb, opt_log_id_from_pb, stored_membership_from_pb,
};
use crate::timeline::Timeline;
use crate::types::{
    LogId, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// At most this many entries are applied in one RocksDB write.
const APPLY_CHUNK: usize = 512;

#[derive(Clone)]
pub struct StateMachine {
    state: Arc<BrokerState>,
    timeline: Arc<Timeline>,
    /// This process has built or installed a snapshot (shared with the snapshot builders).
    has_snapshot: Arc<AtomicBool>,
}

impl StateMachine {
    pub fn new(state: Arc<BrokerState>, timeline: Arc<Timeline>) -> StateMachine {
        StateMachine {
            state,
            timeline,
            has_snapshot: Arc::default(),
        }
    }

    /// The derived state as it is now, read on a blocking thread: it can be large.
    async fn export_now(&self) -> io::Result<StateExport> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.export())
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::from)
    }

    fn snapshot_from_export(export: StateExport) -> io::Result<Snapshot> {
        let last_log_id = opt_log_id_from_pb(export.applied.as_ref())?;
        let last_membership = match &export.membership {
            Some(stored) => stored_membership_from_pb(stored)?,
            None => StoredMembership::default(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: export.data,
        })
    }

    fn apply_chunk(&self, chunk: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        let mut items = Vec::with_capacity(chunk.len());
        let mut responders = Vec::with_capacity(chunk.len());
        for (entry, responder) in chunk {
            let item = match entry.payload {
                EntryPayload::Blank => ApplyItem::Blank,
                EntryPayload::Normal(request) => ApplyItem::Command(request.command),
                EntryPayload::Membership(membership) => {
                    ApplyItem::Membership(membership_to_pb(&membership))
                }
            };
            items.push((log_id_to_pb(&entry.log_id), item));
            responders.push(responder);
        }
        // A chunk is a run of consecutive entries.
        let indexes = items.first().zip(items.last());
        let indexes = indexes.map(|((first, _), (last, _))| first.index..=last.index);
        self.timeline
            .apply_started(indexes.clone().into_iter().flatten());
        let results = self.state.apply(items)?;
        self.timeline.applied(indexes.into_iter().flatten());
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(Response(result));
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied = opt_log_id_from_pb(self.state.applied_log_id()?.as_ref())?;
        let membership = match self.state.applied_membership()? {
            Some(stored) => stored_membership_from_pb(&stored)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut chunk = Vec::new();
        while let Some(item) = entries.next().await {
            chunk.push(item?);
            if chunk.len() >= APPLY_CHUNK {
                self.apply_chunk(std::mem::take(&mut chunk))?;
            }
        }
        if !chunk.is_empty() {
            self.apply_chunk(chunk)?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = snapshot.len(), "installing snapshot");
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.import(&snapshot))
            .await
            .map_err(io::Error::other)??;
        self.has_snapshot.store(true, Ordering::Release);
        Ok(())
    }

    /// None until this process has built or installed a snapshot (openraft asks at every
    /// start, and builds one itself when the log has been purged); then the state as it is
    /// now, which covers at least as much as the last one.
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        if !self.has_snapshot.load(Ordering::Acquire) {
            return Ok(None);
        }
        let export = self.export_now().await?;
        if export.applied.is_none() {
            return Ok(None);
        }
        Ok(Some(Self::snapshot_from_export(export)?))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let snapshot = Self::snapshot_from_export(self.export_now().await?)?;
        self.has_snapshot.store(true, Ordering::Release);
        Ok(snapshot)
    }
}
