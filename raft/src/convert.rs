//! Conversions between openraft's types and the protobuf records on disk and on the wire.
//!
//! Decoding from protobuf is fallible (a required field may be absent in a corrupt record or a
//! malformed request): those conversions are `TryFrom` with [`MissingField`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use openraft::EntryPayload;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use raftmq_proto::raft::v1 as pb;

use crate::types::{
    Entry, LeaderId, LogId, Membership, Request, StoredMembership, TypeConfig, Vote,
};

/// A protobuf record lacks a field openraft needs.
#[derive(Debug, thiserror::Error)]
#[error("malformed {record}: {reason}")]
pub struct MissingField {
    pub record: &'static str,
    pub reason: String,
}

fn missing(record: &'static str, field: &str) -> MissingField {
    MissingField {
        record,
        reason: format!("missing field `{field}`"),
    }
}

impl From<MissingField> for tonic::Status {
    fn from(err: MissingField) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

impl From<MissingField> for std::io::Error {
    fn from(err: MissingField) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }
}

pub fn leader_id_to_pb(id: &LeaderId) -> pb::LeaderId {
    pb::LeaderId {
        term: id.term,
        node_id: id.node_id,
    }
}

pub fn leader_id_from_pb(id: &pb::LeaderId) -> LeaderId {
    LeaderId {
        term: id.term,
        node_id: id.node_id,
    }
}

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(leader_id_to_pb(&id.leader_id)),
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &pb::LogId) -> Result<LogId, MissingField> {
    let leader = id
        .leader_id
        .as_ref()
        .ok_or_else(|| missing("LogId", "leader_id"))?;
    Ok(LogId::new(leader_id_from_pb(leader), id.index))
}

pub fn opt_log_id_from_pb(id: Option<&pb::LogId>) -> Result<Option<LogId>, MissingField> {
    id.map(log_id_from_pb).transpose()
}

pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        leader_id: Some(leader_id_to_pb(&vote.leader_id)),
        committed: vote.committed,
    }
}

pub fn vote_from_pb(vote: &pb::Vote) -> Result<Vote, MissingField> {
    let leader = vote
        .leader_id
        .as_ref()
        .ok_or_else(|| missing("Vote", "leader_id"))?;
    Ok(Vote {
        leader_id: leader_id_from_pb(leader),
        committed: vote.committed,
    })
}

pub fn membership_to_pb(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| pb::NodeIdSet {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
    }
}

pub fn membership_from_pb(membership: &pb::Membership) -> Result<Membership, MissingField> {
    let configs: Vec<BTreeSet<u64>> = membership
        .configs
        .iter()
        .map(|set| set.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, pb::Node> = membership
        .nodes
        .iter()
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    Membership::new(configs, nodes).map_err(|e| MissingField {
        record: "Membership",
        reason: e.to_string(),
    })
}

pub fn stored_membership_to_pb(stored: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: stored.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(stored.membership())),
    }
}

pub fn stored_membership_from_pb(
    stored: &pb::StoredMembership,
) -> Result<StoredMembership, MissingField> {
    let membership = stored
        .membership
        .as_ref()
        .ok_or_else(|| missing("StoredMembership", "membership"))?;
    Ok(StoredMembership::new(
        opt_log_id_from_pb(stored.log_id.as_ref())?,
        membership_from_pb(membership)?,
    ))
}

pub fn entry_to_pb(entry: Entry) -> pb::Entry {
    let payload = match entry.payload {
        EntryPayload::Blank => None,
        EntryPayload::Normal(request) => Some(pb::entry::Payload::Command(Arc::unwrap_or_clone(
            request.command,
        ))),
        EntryPayload::Membership(membership) => Some(pb::entry::Payload::Membership(
            membership_to_pb(&membership),
        )),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload,
    }
}

/// Field numbers of `pb::Entry` (raft.proto), for [`encode_entry`].
const ENTRY_LOG_ID_FIELD: u32 = 1;
const ENTRY_COMMAND_FIELD: u32 = 2;

/// The entry as an encoded `pb::Entry`, written straight from the shared command: the log
/// record and every replication message are made this way, so a send's messages are never
/// copied into an intermediate `pb::Entry`. A command entry is encoded once: the bytes are
/// kept with the command and shared by the log record and the append requests to every
/// follower.
pub fn encode_entry(entry: &Entry) -> Bytes {
    let EntryPayload::Normal(request) = &entry.payload else {
        // Blank and membership entries are rare and small.
        return entry_to_pb(entry.clone()).encode_to_vec().into();
    };
    if let Some(bytes) = request.encoded(&entry.log_id) {
        return bytes;
    }
    use prost::encoding::message;
    let log_id = log_id_to_pb(&entry.log_id);
    let command = request.command.as_ref();
    let len = message::encoded_len(ENTRY_LOG_ID_FIELD, &log_id)
        + message::encoded_len(ENTRY_COMMAND_FIELD, command);
    let mut buf = Vec::with_capacity(len);
    message::encode(ENTRY_LOG_ID_FIELD, &log_id, &mut buf);
    message::encode(ENTRY_COMMAND_FIELD, command, &mut buf);
    let bytes = Bytes::from(buf);
    request.keep_encoded(&entry.log_id, bytes.clone());
    bytes
}

/// The inverse of [`encode_entry`] (and of `pb::Entry::encode`). Decoding from `Bytes` shares
/// the buffer with the message bodies instead of copying them, and a command entry keeps
/// `record` as its encoding, so that a follower writes the bytes it received.
pub fn decode_entry(record: Bytes) -> Result<Entry, MissingField> {
    let entry = pb::Entry::decode(record.clone()).map_err(|e| MissingField {
        record: "Entry",
        reason: e.to_string(),
    })?;
    let entry = entry_from_pb(entry)?;
    if let EntryPayload::Normal(request) = &entry.payload {
        request.keep_encoded(&entry.log_id, record);
    }
    Ok(entry)
}

pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, MissingField> {
    let log_id = log_id_from_pb(
        entry
            .log_id
            .as_ref()
            .ok_or_else(|| missing("Entry", "log_id"))?,
    )?;
    let payload = match entry.payload {
        None => EntryPayload::Blank,
        Some(pb::entry::Payload::Command(command)) => {
            EntryPayload::Normal(Request::new(Arc::new(command)))
        }
        Some(pb::entry::Payload::Membership(membership)) => {
            EntryPayload::Membership(membership_from_pb(&membership)?)
        }
    };
    Ok(Entry { log_id, payload })
}

pub fn append_request_to_pb(req: AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&req.vote)),
        prev_log_id: req.prev_log_id.as_ref().map(log_id_to_pb),
        entries: req.entries.iter().map(encode_entry).collect(),
        leader_commit: req.leader_commit.as_ref().map(log_id_to_pb),
        leader_cut_off: false,
    }
}

pub fn append_request_from_pb(
    req: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, MissingField> {
    let vote = vote_from_pb(
        req.vote
            .as_ref()
            .ok_or_else(|| missing("AppendEntriesRequest", "vote"))?,
    )?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id: opt_log_id_from_pb(req.prev_log_id.as_ref())?,
        leader_commit: opt_log_id_from_pb(req.leader_commit.as_ref())?,
        entries: req
            .entries
            .into_iter()
            .map(decode_entry)
            .collect::<Result<_, _>>()?,
    })
}

pub fn append_response_to_pb(
    resp: &AppendEntriesResponse<TypeConfig>,
) -> pb::AppendEntriesResponse {
    let mut out = pb::AppendEntriesResponse::default();
    match resp {
        AppendEntriesResponse::Success => {}
        AppendEntriesResponse::PartialSuccess(last) => {
            out.partial = true;
            out.last_log_id = last.as_ref().map(log_id_to_pb);
        }
        AppendEntriesResponse::Conflict => out.conflict = true,
        AppendEntriesResponse::HigherVote(vote) => out.rejected_by = Some(vote_to_pb(vote)),
    }
    out
}

pub fn append_response_from_pb(
    resp: &pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, MissingField> {
    if let Some(vote) = &resp.rejected_by {
        return Ok(AppendEntriesResponse::HigherVote(vote_from_pb(vote)?));
    }
    if resp.conflict {
        return Ok(AppendEntriesResponse::Conflict);
    }
    if resp.partial {
        return Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(
            resp.last_log_id.as_ref(),
        )?));
    }
    Ok(AppendEntriesResponse::Success)
}

/// Stream-append results: `Ok(last matched log id)` or a conflict / higher vote.
pub fn stream_result_to_pb(result: &StreamAppendResult<TypeConfig>) -> pb::AppendEntriesResponse {
    let mut out = pb::AppendEntriesResponse::default();
    match result {
        Ok(last) => out.last_log_id = last.as_ref().map(log_id_to_pb),
        Err(StreamAppendError::Conflict(log_id)) => {
            out.conflict = true;
            out.last_log_id = Some(log_id_to_pb(log_id));
        }
        Err(StreamAppendError::HigherVote(vote)) => out.rejected_by = Some(vote_to_pb(vote)),
    }
    out
}

pub fn stream_result_from_pb(
    resp: &pb::AppendEntriesResponse,
) -> Result<StreamAppendResult<TypeConfig>, MissingField> {
    if let Some(vote) = &resp.rejected_by {
        return Ok(Err(StreamAppendError::HigherVote(vote_from_pb(vote)?)));
    }
    if resp.conflict {
        let log_id = resp
            .last_log_id
            .as_ref()
            .ok_or_else(|| missing("AppendEntriesResponse", "last_log_id"))?;
        return Ok(Err(StreamAppendError::Conflict(log_id_from_pb(log_id)?)));
    }
    Ok(Ok(opt_log_id_from_pb(resp.last_log_id.as_ref())?))
}

pub fn vote_request_to_pb(req: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&req.vote)),
        last_log_id: req.last_log_id.as_ref().map(log_id_to_pb),
        leadership_transfer: req.leadership_transfer,
    }
}

pub fn vote_request_from_pb(
    req: &pb::VoteRequest,
) -> Result<VoteRequest<TypeConfig>, MissingField> {
    let vote = vote_from_pb(
        req.vote
            .as_ref()
            .ok_or_else(|| missing("VoteRequest", "vote"))?,
    )?;
    let mut out = VoteRequest::new(vote, opt_log_id_from_pb(req.last_log_id.as_ref())?);
    out.leadership_transfer = req.leadership_transfer;
    Ok(out)
}

pub fn vote_response_to_pb(resp: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: resp.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_response_from_pb(
    resp: &pb::VoteResponse,
) -> Result<VoteResponse<TypeConfig>, MissingField> {
    let vote = vote_from_pb(
        resp.vote
            .as_ref()
            .ok_or_else(|| missing("VoteResponse", "vote"))?,
    )?;
    Ok(VoteResponse::new(
        vote,
        opt_log_id_from_pb(resp.last_log_id.as_ref())?,
        resp.vote_granted,
    ))
}

pub fn transfer_leader_request_to_pb(
    req: &TransferLeaderRequest<TypeConfig>,
) -> pb::TransferLeaderRequest {
    pb::TransferLeaderRequest {
        from_leader: Some(vote_to_pb(req.from_leader())),
        to_node_id: *req.to_node_id(),
        last_log_id: req.last_log_id().map(log_id_to_pb),
    }
}

pub fn transfer_leader_request_from_pb(
    req: &pb::TransferLeaderRequest,
) -> Result<TransferLeaderRequest<TypeConfig>, MissingField> {
    let from = vote_from_pb(
        req.from_leader
            .as_ref()
            .ok_or_else(|| missing("TransferLeaderRequest", "from_leader"))?,
    )?;
    Ok(TransferLeaderRequest::new(
        from,
        req.to_node_id,
        opt_log_id_from_pb(req.last_log_id.as_ref())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> pb::Node {
        pb::Node {
            raft_addr: format!("127.0.0.1:{port}"),
            client_addr: format!("127.0.0.1:{}", port + 1),
        }
    }

    #[test]
    fn entries_round_trip_through_protobuf() {
        let log_id = LogId::new(
            LeaderId {
                term: 3,
                node_id: 2,
            },
            17,
        );
        let membership = Membership::new(
            vec![[1, 2, 3].into_iter().collect()],
            [(1, node(9000)), (2, node(9010)), (3, node(9020))]
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap();
        let command = pb::Command {
            kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
                name: "T".into(),
                queues: 8,
                created_ms: 1,
                message_type: 0,
            })),
        };
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Request::new(Arc::new(command))),
            EntryPayload::Membership(membership),
        ] {
            let entry = Entry { log_id, payload };
            let back = entry_from_pb(entry_to_pb(entry.clone())).unwrap();
            assert_eq!(entry_to_pb(entry.clone()), entry_to_pb(back.clone()));
            assert_eq!(entry.log_id, back.log_id);
            // The borrowed encoding is byte for byte what prost makes of the whole record
            // (a membership's node map has no fixed order, so it is compared decoded only).
            let encoded = encode_entry(&entry);
            if !matches!(entry.payload, EntryPayload::Membership(_)) {
                assert_eq!(encoded, entry_to_pb(entry.clone()).encode_to_vec());
            }
            let decoded = decode_entry(encoded).unwrap();
            assert_eq!(entry_to_pb(decoded), entry_to_pb(entry.clone()));
        }
    }

    #[test]
    fn a_command_entry_is_encoded_once_and_a_received_record_is_kept() {
        let log_id = |index| {
            LogId::new(
                LeaderId {
                    term: 2,
                    node_id: 1,
                },
                index,
            )
        };
        let command = Arc::new(pb::Command {
            kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
                name: "orders".into(),
                queues: 4,
                created_ms: 7,
                message_type: 0,
            })),
        });
        let request = Request::new(command.clone());
        let entry = Entry {
            log_id: log_id(5),
            payload: EntryPayload::Normal(request.clone()),
        };
        // The log record and every append request share one buffer.
        let first = encode_entry(&entry);
        let again = encode_entry(&entry);
        assert_eq!(first.as_ptr(), again.as_ptr(), "encoded twice");
        assert_eq!(first, entry_to_pb(entry.clone()).encode_to_vec());

        // The same command proposed again lands in another entry: encoded with that log id.
        let other = Entry {
            log_id: log_id(9),
            payload: EntryPayload::Normal(request),
        };
        let other_bytes = encode_entry(&other);
        assert_ne!(first, other_bytes);
        assert_eq!(other_bytes, entry_to_pb(other.clone()).encode_to_vec());

        // A follower writes the very bytes it received.
        let received = first.clone();
        let decoded = decode_entry(received.clone()).unwrap();
        assert_eq!(received.as_ptr(), encode_entry(&decoded).as_ptr());
    }

    #[test]
    fn a_record_without_its_log_id_is_refused() {
        let err = entry_from_pb(pb::Entry::default()).unwrap_err();
        assert!(err.to_string().contains("log_id"), "{err}");
        assert!(vote_from_pb(&pb::Vote::default()).is_err());
    }

    #[test]
    fn append_responses_round_trip() {
        let log_id = LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            5,
        );
        let vote = Vote {
            leader_id: LeaderId {
                term: 2,
                node_id: 3,
            },
            committed: true,
        };
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id)),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote),
        ] {
            assert_eq!(
                resp,
                append_response_from_pb(&append_response_to_pb(&resp)).unwrap()
            );
        }
    }
}
