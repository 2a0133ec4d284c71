//! `raftmq consume`: read a topic's queues with offset-based pulls and commit the group's
//! progress after each batch.

use std::time::Duration;

use raftmq_proto::admin::v1 as admin;
use raftmq_proto::admin::v1::admin_service_client::AdminServiceClient;
use raftmq_proto::rocketmq::v2;
use tonic::transport::Channel;

use super::EndpointArgs;
use crate::client::{Client, ClientError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    /// The group's committed offset, or the beginning when it has none.
    Committed,
    Beginning,
    End,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    #[arg(long)]
    pub topic: String,
    /// Consumer group whose offsets are read and committed.
    #[arg(long, default_value = "raftmq-cli")]
    pub group: String,
    #[arg(long, value_enum, default_value_t = StartFrom::Committed)]
    pub from: StartFrom,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new messages instead of stopping once every queue is drained.
    #[arg(long)]
    pub follow: bool,
    /// Do not commit offsets.
    #[arg(long)]
    pub no_commit: bool,
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.endpoints.client()?;
    let result = tokio::select! {
        result = consume(&client, &args) => result,
        () = super::shutdown_signal() => Ok(()),
    };
    // The broker lists this consumer among the group's until it says goodbye or falls silent
    // for 30 s, and refuses to reset the group's offsets meanwhile.
    client.notify_termination(&args.group).await;
    result
}

async fn consume(client: &Client, args: &ConsumeArgs) -> anyhow::Result<()> {
    require_topic(client, &args.topic).await?;
    let queues = client.route(&args.topic).await?.len() as i32;
    let mut offsets = Vec::with_capacity(queues as usize);
    for queue in 0..queues {
        let offset = match args.from {
            StartFrom::Beginning => {
                client
                    .query_offset(&args.topic, queue, v2::QueryOffsetPolicy::Beginning)
                    .await?
            }
            StartFrom::End => {
                client
                    .query_offset(&args.topic, queue, v2::QueryOffsetPolicy::End)
                    .await?
            }
            StartFrom::Committed => match client.get_offset(&args.group, &args.topic, queue).await?
            {
                Some(offset) => offset,
                None => {
                    client
                        .query_offset(&args.topic, queue, v2::QueryOffsetPolicy::Beginning)
                        .await?
                }
            },
        };
        offsets.push(offset);
    }
    let mut received = 0u64;
    loop {
        let mut any = false;
        for queue in 0..queues {
            let from = offsets[queue as usize];
            let (messages, mut next) = client
                .pull(&args.group, &args.topic, queue, from, 64, Duration::ZERO)
                .await?;
            for m in &messages {
                let props = m.system_properties.clone().unwrap_or_default();
                let offset = props.queue_offset.unwrap_or_default();
                println!(
                    "queue {queue} offset {offset} id {} tag {} body {}",
                    props.message_id,
                    props.tag.unwrap_or_default(),
                    String::from_utf8_lossy(&m.body)
                );
                received += 1;
                if args.count.is_some_and(|c| received >= c) {
                    // Commit only what was shown.
                    next = offset.max(0) as u64 + 1;
                    break;
                }
            }
            if next != from {
                any = true;
                offsets[queue as usize] = next;
                if !args.no_commit {
                    client
                        .update_offset(&args.group, &args.topic, queue, next)
                        .await?;
                }
            }
            if args.count.is_some_and(|c| received >= c) {
                eprintln!("{received} message(s) received");
                return Ok(());
            }
        }
        if !any {
            if !args.follow {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("{received} message(s) received; every queue is drained");
    Ok(())
}

/// A mistyped name must be told, not waited on: where the group auto-creates topics, the
/// broker answers reads of an unknown name as an empty topic, and `--follow` would wait forever.
async fn require_topic(client: &Client, topic: &str) -> anyhow::Result<()> {
    let describe = |mut admin: AdminServiceClient<Channel>| {
        let request = admin::DescribeTopicRequest {
            name: topic.to_string(),
        };
        async move { admin.describe_topic(request).await }
    };
    match client.admin(describe).await {
        Ok(_) => Ok(()),
        Err(ClientError::AdminRefused {
            code: tonic::Code::NotFound,
            ..
        }) => anyhow::bail!(
            "topic `{topic}` does not exist, so there is nothing to consume (create it with \
             `raftmq admin topic create {topic}`, or send to it first where topics are \
             auto-created)"
        ),
        Err(e) => Err(e.into()),
    }
}
