//! `raftmq admin`: cluster status, topics and consumer groups.

use std::time::Duration;

use raftmq_proto::admin::v1 as admin;
use serde_json::json;

use super::EndpointArgs;
use crate::broker::messages::now_ms;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// How long to wait for a node's answer, in milliseconds (`cluster` waits at most 2000 for
    /// each node and shows one that does not answer in time as unreachable).
    #[arg(long, global = true, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Each node's role, term, leader, log indexes and replication lag.
    Cluster {
        #[arg(long)]
        json: bool,
    },
    /// Create, list or describe topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Create (or update) and list consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Move the group's leadership (before maintenance on the leader's machine).
    Leader {
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// List, add and remove the Raft group's members.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum MemberCommand {
    /// Each member's id, addresses, whether it votes, and the log index it holds.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a node (start it first, with the group's members and itself in --members): it
    /// receives the whole log as a learner, then becomes a voter.
    Add {
        node_id: u64,
        /// HOST:PORT the other nodes reach its Raft port on.
        #[arg(long)]
        raft_addr: String,
        /// HOST:PORT clients reach it on.
        #[arg(long)]
        client_addr: String,
        /// Give up (it stays a learner) if it has not received the log within this time.
        #[arg(long, default_value_t = 600)]
        catch_up_timeout_secs: u32,
    },
    /// Remove a node from the group (stop its process afterwards).
    Remove { node_id: u64 },
}

#[derive(Debug, clap::Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another voter and wait until it leads.
    Transfer {
        /// The node id to hand over to (default: the follower whose log is furthest along).
        #[arg(long)]
        to: Option<u64>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u32,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Create a consumer group, or change the settings of an existing one.
    Create {
        name: String,
        /// Deliver each queue's messages one at a time, in order (FIFO consumption).
        #[arg(long)]
        fifo: bool,
        /// Deliveries of one message before it moves to %DLQ%<group> (default 17).
        #[arg(long, default_value_t = 0)]
        max_delivery_attempts: u32,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// The group's committed offset and lag in every queue it has consumed from, and its
    /// consumers online.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a group's offsets in every queue of a topic: replay from the start or a point in
    /// time, or skip a backlog. Refused while a pull consumer of the group is online on the
    /// topic (it would commit its old position again); simple and push consumers may keep
    /// running.
    #[command(group(clap::ArgGroup::new("to").required(true)))]
    ResetOffsets {
        name: String,
        #[arg(long)]
        topic: String,
        /// The oldest message each queue holds.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// Past the newest message: skip everything stored so far.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// The first message stored at or after this time, in ms since the epoch.
        #[arg(long, group = "to", value_name = "MS")]
        to_timestamp_ms: Option<i64>,
        /// This offset in every queue (a queue's end where it holds fewer messages).
        #[arg(long, group = "to", value_name = "OFFSET")]
        to_offset: Option<u64>,
        /// Show the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
        /// Reset even while a pull consumer of the group is online on the topic, or a node
        /// cannot say whether one is.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TopicCommand {
    Create {
        name: String,
        /// Number of queues, 1 to 1024 (default: the broker's default_queues).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=crate::config::MAX_QUEUES as i64))]
        queues: Option<u32>,
        /// The one message type the topic accepts: normal, fifo, delay, transaction, or mixed
        /// (every type, the default). A message of another type gets
        /// MESSAGE_PROPERTY_CONFLICT_WITH_TYPE, as in RocketMQ 5.
        #[arg(long, default_value = "mixed")]
        message_type: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn print_members(
    leader: Option<u64>,
    members: &[admin::MemberInfo],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let members: Vec<_> = members
            .iter()
            .map(|m| {
                json!({
                    "node_id": m.node_id,
                    "raft_addr": m.raft_addr,
                    "client_addr": m.client_addr,
                    "voter": m.voter,
                    "matched_index": m.matched_index,
                })
            })
            .collect();
        let out = json!({ "leader_id": leader, "members": members });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:>4} {:<8} {:<28} {:<28} {:>8}",
        "ID", "ROLE", "RAFT_ADDR", "CLIENT_ADDR", "MATCHED"
    );
    for m in members {
        let role = match (leader == Some(m.node_id), m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        println!(
            "{:>4} {:<8} {:<28} {:<28} {:>8}",
            m.node_id,
            role,
            m.raft_addr,
            m.client_addr,
            opt(m.matched_index)
        );
    }
    Ok(())
}

/// The status is printed either way; a script can still tell from the exit code that no node
/// answered (a wrong endpoint list, or the whole group down).
fn all_unreachable_is_an_error(
    statuses: &[(String, Result<admin::NodeStatus, String>)],
) -> anyhow::Result<()> {
    if statuses.iter().all(|(_, status)| status.is_err()) {
        let endpoints: Vec<&str> = statuses.iter().map(|(e, _)| e.as_str()).collect();
        anyhow::bail!("no node answered (endpoints: {})", endpoints.join(", "));
    }
    Ok(())
}

/// How long the leader has led, from its own clock: after a failover drill this is the first
/// thing an operator looks for.
fn tenure_line(leader: &admin::NodeStatus) -> Option<String> {
    let since = leader.leading_since_ms?;
    let led = Duration::from_millis(u64::try_from(now_ms() - since).unwrap_or(0));
    Some(format!(
        "node {} has led term {} for {}",
        leader.node_id,
        leader.term,
        led_for_text(led)
    ))
}

/// `850 ms`, `12.4 s`, `7m 03s`, `5h 02m`.
fn led_for_text(led: Duration) -> String {
    let secs = led.as_secs();
    match secs {
        0 => format!("{} ms", led.as_millis()),
        1..60 => format!("{:.1} s", led.as_secs_f64()),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Free space of a node's data dir, marked when it is under the mark or full.
fn disk_text(s: &admin::NodeStatus) -> String {
    const MIB: u64 = 1 << 20;
    let free = match s.disk_free_bytes {
        u64::MAX => "?".to_string(),
        b if b >= 10 * 1024 * MIB => format!("{}G", b / (1024 * MIB)),
        b => format!("{}M", b / MIB),
    };
    if s.disk_full {
        format!("{free} FULL")
    } else if s.disk_low {
        format!("{free} LOW")
    } else {
        free
    }
}

fn node_json(
    endpoint: &str,
    status: &Result<admin::NodeStatus, String>,
    lag: Option<u64>,
) -> serde_json::Value {
    match status {
        Ok(s) => json!({
            "endpoint": endpoint,
            "reachable": true,
            "node_id": s.node_id,
            "group": s.group,
            "role": s.role,
            "term": s.term,
            "leader_id": s.leader_id,
            "last_log_index": s.last_log_index,
            "committed_index": s.committed_index,
            "applied_index": s.applied_index,
            "purged_index": s.purged_index,
            "replication_lag": lag,
            "flush": s.flush,
            "disk_free_bytes": s.disk_free_bytes,
            "min_free_disk_bytes": s.min_free_disk_bytes,
            "disk_low": s.disk_low,
            "disk_full": s.disk_full,
            "leading_since_ms": s.leading_since_ms,
            "highest_command_kind": s.highest_command_kind,
        }),
        Err(e) => json!({"endpoint": endpoint, "reachable": false, "error": e}),
    }
}

fn topic_json(t: &admin::TopicInfo) -> serde_json::Value {
    json!({
        "name": t.name,
        "queues": t.queues,
        "message_type": t.message_type,
        "created_ms": t.created_ms,
        "messages": t.queue_max_offsets.iter().sum::<u64>(),
        "queue_max_offsets": t.queue_max_offsets,
    })
}

fn group_json(g: &admin::GroupInfo) -> serde_json::Value {
    json!({
        "name": g.name,
        "created": g.created,
        "fifo": g.fifo,
        "max_delivery_attempts": g.max_delivery_attempts,
        "created_ms": g.created_ms,
        "lag": g.lag,
        "consumers_online": g.consumers_online,
    })
}

fn total_lag(reply: &admin::DescribeGroupResponse) -> u64 {
    reply.queues.iter().map(|q| q.lag).sum()
}

fn group_progress_json(reply: &admin::DescribeGroupResponse) -> serde_json::Value {
    let queues: Vec<_> = reply
        .queues
        .iter()
        .map(|q| {
            json!({
                "topic": q.topic,
                "queue_id": q.queue_id,
                "committed_offset": q.committed_offset,
                "max_offset": q.max_offset,
                "lag": q.lag,
            })
        })
        .collect();
    let clients: Vec<_> = reply
        .clients
        .iter()
        .map(|c| {
            json!({
                "client_id": c.client_id,
                "kind": c.kind,
                "topics": c.topics,
                "idle_ms": c.idle_ms,
                "node_ids": c.node_ids,
            })
        })
        .collect();
    json!({
        "group": reply.group.as_ref().map(group_json),
        "lag": total_lag(reply),
        "queues": queues,
        "clients": clients,
        "unanswered_nodes": reply.unanswered_nodes,
        "node_id": reply.node_id,
        "applied_index": reply.applied_index,
    })
}

fn print_group_progress(name: &str, reply: &admin::DescribeGroupResponse) {
    match &reply.group {
        Some(g) => println!(
            "group {name} (fifo: {}, max delivery attempts: {})",
            g.fifo, g.max_delivery_attempts
        ),
        None => println!("group {name} (not created: offsets committed by pull consumers)"),
    }
    println!(
        "{:<40} {:>5} {:>12} {:>12} {:>12}",
        "TOPIC", "QUEUE", "COMMITTED", "MAX_OFFSET", "LAG"
    );
    for q in &reply.queues {
        println!(
            "{:<40} {:>5} {:>12} {:>12} {:>12}",
            q.topic,
            q.queue_id,
            opt(q.committed_offset),
            q.max_offset,
            q.lag
        );
    }
    println!(
        "total lag {} message(s) (node {}, applied index {})",
        total_lag(reply),
        reply.node_id,
        reply.applied_index
    );
    if reply.clients.is_empty() {
        println!("no consumer online");
    } else {
        println!(
            "{:<40} {:<7} {:>8} {:<8} TOPICS",
            "CONSUMER", "KIND", "IDLE_S", "NODES"
        );
        for c in &reply.clients {
            println!(
                "{:<40} {:<7} {:>8.1} {:<8} {}",
                c.client_id,
                if c.kind.is_empty() { "-" } else { &c.kind },
                c.idle_ms as f64 / 1000.0,
                node_list(&c.node_ids, ","),
                c.topics.join(",")
            );
        }
    }
    print_unanswered(&reply.unanswered_nodes);
}

fn node_list(ids: &[u64], separator: &str) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    ids.join(separator)
}

/// Members that could not say which consumers call them: the consumer figures may be short.
fn print_unanswered(nodes: &[u64]) {
    if !nodes.is_empty() {
        println!(
            "node {} did not say which consumers call it",
            node_list(nodes, ", ")
        );
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = args.endpoints.client()?;
    client.timeout = Duration::from_millis(args.timeout_ms);
    match args.command {
        AdminCommand::Cluster { json } => {
            let statuses = client.cluster_status().await;
            // Lag is what the leader knows: its last log index minus each node's matched index.
            let leader = statuses
                .iter()
                .find_map(|(_, s)| s.as_ref().ok().filter(|s| s.role == "leader"));
            let lag_of = |node_id: u64| -> Option<u64> {
                let leader = leader?;
                let matched = leader.replication.iter().find(|r| r.node_id == node_id)?;
                Some(
                    leader
                        .last_log_index?
                        .saturating_sub(matched.matched_index.unwrap_or(0)),
                )
            };
            if json {
                let nodes: Vec<_> = statuses
                    .iter()
                    .map(|(e, s)| node_json(e, s, s.as_ref().ok().and_then(|s| lag_of(s.node_id))))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "nodes": nodes }))?
                );
                return all_unreachable_is_an_error(&statuses);
            }
            println!(
                "{:<6} {:<10} {:>6} {:>7} {:>10} {:>10} {:>10} {:>6} {:>10}  ENDPOINT",
                "NODE",
                "ROLE",
                "TERM",
                "LEADER",
                "LAST_LOG",
                "COMMITTED",
                "APPLIED",
                "LAG",
                "DISK_FREE"
            );
            for (endpoint, status) in &statuses {
                match status {
                    Ok(s) => println!(
                        "{:<6} {:<10} {:>6} {:>7} {:>10} {:>10} {:>10} {:>6} {:>10}  {endpoint}",
                        s.node_id,
                        s.role,
                        s.term,
                        opt(s.leader_id),
                        opt(s.last_log_index),
                        opt(s.committed_index),
                        opt(s.applied_index),
                        opt(lag_of(s.node_id)),
                        disk_text(s),
                    ),
                    Err(e) => println!(
                        "{:<6} {:<10} {:>6} {:>7} {:>10} {:>10} {:>10} {:>6} {:>10}  {endpoint} ({e})",
                        "?", "unreachable", "-", "-", "-", "-", "-", "-", "-"
                    ),
                }
            }
            if let Some(line) = leader.and_then(tenure_line) {
                println!("{line}");
            }
            if statuses.iter().any(|(_, status)| status.is_err()) {
                println!(
                    "an unreachable node is down, or running but cut off from the majority of \
                     its group, which makes it refuse client connections: its HTTP port's \
                     /readyz tells which"
                );
            }
            all_unreachable_is_an_error(&statuses)?;
        }
        AdminCommand::Topic { command } => match command {
            TopicCommand::Create {
                name,
                queues,
                message_type,
            } => {
                let reply = client
                    .admin(|mut c| {
                        let request = admin::CreateTopicRequest {
                            name: name.clone(),
                            // 0 asks for the broker's default.
                            queues: queues.unwrap_or(0),
                            message_type: message_type.clone(),
                        };
                        async move { c.create_topic(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                let topic = reply.topic.unwrap_or_default();
                if reply.created {
                    println!(
                        "created topic {} with {} queues ({} messages)",
                        topic.name, topic.queues, topic.message_type
                    );
                } else {
                    println!(
                        "topic {} already exists with {} queues ({} messages)",
                        topic.name, topic.queues, topic.message_type
                    );
                }
            }
            TopicCommand::List { json } => {
                let reply = client
                    .admin(|mut c| async move {
                        c.list_topics(admin::ListTopicsRequest {})
                            .await
                            .map(|r| r.into_inner())
                    })
                    .await?;
                if json {
                    let topics: Vec<_> = reply.topics.iter().map(topic_json).collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({ "topics": topics }))?
                    );
                } else {
                    println!("{:<40} {:>7} {:>12}", "TOPIC", "QUEUES", "MESSAGES");
                    for t in &reply.topics {
                        println!(
                            "{:<40} {:>7} {:>12}",
                            t.name,
                            t.queues,
                            t.queue_max_offsets.iter().sum::<u64>()
                        );
                    }
                }
            }
            TopicCommand::Describe { name, json } => {
                let reply = client
                    .admin(|mut c| {
                        let request = admin::DescribeTopicRequest { name: name.clone() };
                        async move { c.describe_topic(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                let topic = reply.topic.unwrap_or_default();
                if json {
                    println!("{}", serde_json::to_string_pretty(&topic_json(&topic))?);
                } else {
                    println!(
                        "topic {} ({} queues, {} messages)",
                        topic.name, topic.queues, topic.message_type
                    );
                    for (queue, max) in topic.queue_max_offsets.iter().enumerate() {
                        println!("  queue {queue:>3}: {max} message(s)");
                    }
                }
            }
        },
        AdminCommand::Leader {
            command: LeaderCommand::Transfer { to, timeout_secs },
        } => {
            let request = admin::TransferLeaderRequest {
                to,
                timeout_ms: timeout_secs.saturating_mul(1000),
            };
            let reply = client
                .admin(
                    |mut c| async move { c.transfer_leader(request).await.map(|r| r.into_inner()) },
                )
                .await?;
            println!(
                "leadership moved from node {} to node {} in {} ms",
                reply.previous_leader, reply.leader, reply.took_ms
            );
        }
        AdminCommand::Member { command } => match command {
            MemberCommand::List { json } => {
                let reply = client
                    .admin(|mut c| async move {
                        c.list_members(admin::ListMembersRequest {})
                            .await
                            .map(|r| r.into_inner())
                    })
                    .await?;
                print_members(reply.leader_id, &reply.members, json)?;
            }
            MemberCommand::Add {
                node_id,
                raft_addr,
                client_addr,
                catch_up_timeout_secs,
            } => {
                let request = admin::AddMemberRequest {
                    node_id,
                    raft_addr,
                    client_addr,
                    catch_up_timeout_ms: catch_up_timeout_secs.saturating_mul(1000),
                };
                eprintln!(
                    "adding node {node_id}: it receives the log first, then becomes a voter..."
                );
                let reply = client
                    .admin(|mut c| {
                        let request = request.clone();
                        async move { c.add_member(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                println!("node {node_id} is a voter (took {} ms)", reply.took_ms);
                print_members(None, &reply.members, false)?;
            }
            MemberCommand::Remove { node_id } => {
                let reply = client
                    .admin(|mut c| async move {
                        c.remove_member(admin::RemoveMemberRequest { node_id })
                            .await
                            .map(|r| r.into_inner())
                    })
                    .await?;
                println!("node {node_id} removed; stop its process now");
                print_members(None, &reply.members, false)?;
            }
        },
        AdminCommand::Group { command } => match command {
            GroupCommand::Create {
                name,
                fifo,
                max_delivery_attempts,
            } => {
                let reply = client
                    .admin(|mut c| {
                        let request = admin::CreateGroupRequest {
                            name: name.clone(),
                            fifo,
                            max_delivery_attempts,
                        };
                        async move { c.create_group(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                let group = reply.group.unwrap_or_default();
                println!(
                    "{} group {} (fifo: {}, max delivery attempts: {})",
                    if reply.created { "created" } else { "updated" },
                    group.name,
                    group.fifo,
                    group.max_delivery_attempts
                );
            }
            GroupCommand::List { json } => {
                let reply = client
                    .admin(|mut c| async move {
                        c.list_groups(admin::ListGroupsRequest {})
                            .await
                            .map(|r| r.into_inner())
                    })
                    .await?;
                if json {
                    let groups: Vec<_> = reply.groups.iter().map(group_json).collect();
                    let document = json!({
                        "groups": groups,
                        "unanswered_nodes": reply.unanswered_nodes,
                    });
                    println!("{}", serde_json::to_string_pretty(&document)?);
                } else {
                    println!(
                        "{:<40} {:>5} {:>13} {:>12} {:>7}",
                        "GROUP", "FIFO", "MAX_ATTEMPTS", "LAG", "ONLINE"
                    );
                    let or_dash = |shown: bool, value: String| {
                        if shown { value } else { "-".to_string() }
                    };
                    for g in &reply.groups {
                        // A group known only by its consumers (offsets committed, or running)
                        // has no settings.
                        println!(
                            "{:<40} {:>5} {:>13} {:>12} {:>7}",
                            g.name,
                            or_dash(g.created, g.fifo.to_string()),
                            or_dash(g.created, g.max_delivery_attempts.to_string()),
                            opt(g.lag),
                            opt(g.consumers_online.map(u64::from))
                        );
                    }
                    print_unanswered(&reply.unanswered_nodes);
                }
            }
            GroupCommand::Describe { name, json } => {
                let reply = client
                    .admin(|mut c| {
                        let request = admin::DescribeGroupRequest { name: name.clone() };
                        async move { c.describe_group(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&group_progress_json(&reply))?
                    );
                } else {
                    print_group_progress(&name, &reply);
                }
            }
            GroupCommand::ResetOffsets {
                name,
                topic,
                to_earliest,
                to_latest,
                to_timestamp_ms,
                to_offset,
                dry_run,
                force,
            } => {
                use admin::reset_offsets_request::To;
                let to = match (to_earliest, to_latest, to_timestamp_ms, to_offset) {
                    (true, ..) => To::Earliest(true),
                    (_, true, ..) => To::Latest(true),
                    (_, _, Some(ms), _) => To::TimestampMs(ms),
                    (.., Some(offset)) => To::Offset(offset),
                    _ => anyhow::bail!("say where the offsets move to (clap requires one)"),
                };
                let request = admin::ResetOffsetsRequest {
                    group: name.clone(),
                    topic: topic.clone(),
                    to: Some(to),
                    dry_run,
                    force,
                };
                let reply = client
                    .admin(|mut c| {
                        let request = request.clone();
                        async move { c.reset_offsets(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                println!("{:>5} {:>12} {:>12}", "QUEUE", "FROM", "TO");
                for q in &reply.queues {
                    println!(
                        "{:>5} {:>12} {:>12}",
                        q.queue_id,
                        opt(q.previous_offset),
                        q.new_offset
                    );
                }
                if reply.committed {
                    println!("group {name}: offsets on {topic} reset");
                } else {
                    println!("group {name}: dry run, nothing committed");
                }
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaders_tenure_reads_in_the_unit_that_fits() {
        let cases = [
            (850, "850 ms"),
            (12_400, "12.4 s"),
            (423_000, "7m 03s"),
            (18_120_000, "5h 02m"),
        ];
        for (ms, text) in cases {
            assert_eq!(led_for_text(Duration::from_millis(ms)), text);
        }
    }
}
