//! Transactional messages over the real gRPC API: half messages stay invisible until
//! committed, rollbacks discard them, and an unresolved one is checked back through the
//! producer's Telemetry stream, even when that stream is held by a follower.

use std::time::{Duration, Instant};

use chaos_tests::cluster::{Cluster, ClusterOptions};
use raftmq::client::{message, resource};
use raftmq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::v2::{self as v2, Code};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const CLIENT_ID: &str = "tx-test-producer";

fn with_client_id<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-mq-client-id", CLIENT_ID.parse().unwrap());
    request
}

fn half(body: &str, first_check_after: Option<Duration>) -> v2::Message {
    let mut m = message("tx", body.as_bytes().to_vec(), None, &[]);
    let props = m.system_properties.as_mut().unwrap();
    props.message_type = v2::MessageType::Transaction as i32;
    props.orphaned_transaction_recovery_duration =
        first_check_after.and_then(|d| prost_types::Duration::try_from(d).ok());
    m
}

async fn end(
    client: &mut MessagingServiceClient<Channel>,
    sent: &v2::SendResultEntry,
    resolution: v2::TransactionResolution,
    source: v2::TransactionSource,
) -> anyhow::Result<v2::Status> {
    let reply = client
        .end_transaction(with_client_id(v2::EndTransactionRequest {
            topic: Some(resource("tx")),
            message_id: sent.message_id.clone(),
            transaction_id: sent.transaction_id.clone(),
            resolution: resolution as i32,
            source: source as i32,
            trace_context: String::new(),
        }))
        .await?
        .into_inner();
    Ok(reply.status.unwrap_or_default())
}

async fn visible_bodies(cluster: &Cluster, group: &str) -> anyhow::Result<Vec<String>> {
    let received = cluster
        .client()
        .receive(
            group,
            "tx",
            32,
            Duration::from_secs(30),
            Duration::from_secs(1),
        )
        .await?;
    Ok(received
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_messages_commit_roll_back_and_are_checked_back() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("tx", 2).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let endpoint = format!("http://{}", cluster.node(follower).client_addr);
    let mut client = MessagingServiceClient::connect(endpoint).await?;

    // The producer's Telemetry stream, held by a follower.
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(8);
    commands_tx
        .send(v2::TelemetryCommand {
            status: None,
            command: Some(v2::telemetry_command::Command::Settings(v2::Settings {
                client_type: Some(v2::ClientType::Producer as i32),
                pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                    topics: vec![resource("tx")],
                    max_body_size: 0,
                    validate_message_type: true,
                })),
                ..Default::default()
            })),
        })
        .await?;
    let mut inbound = client
        .telemetry(with_client_id(tokio_stream::wrappers::ReceiverStream::new(
            commands_rx,
        )))
        .await?
        .into_inner();
    let settings = inbound.next().await.expect("a settings reply")?;
    assert!(matches!(
        settings.command,
        Some(v2::telemetry_command::Command::Settings(_))
    ));

    let messages = vec![
        half("commit-me", None),
        half("roll-me-back", None),
        half("ask-me", Some(Duration::from_secs(1))),
    ];
    let mut sent = Vec::new();
    for m in messages {
        let reply = client
            .send_message(with_client_id(v2::SendMessageRequest { messages: vec![m] }))
            .await?
            .into_inner();
        assert_eq!(Some(Code::Ok as i32), reply.status.map(|s| s.code));
        let entry = reply.entries.into_iter().next().expect("one entry");
        assert!(
            !entry.transaction_id.is_empty(),
            "half messages get a transaction id"
        );
        sent.push(entry);
    }
    assert!(
        visible_bodies(&cluster, "g").await?.is_empty(),
        "half messages are invisible"
    );

    use v2::TransactionResolution::{Commit, Rollback};
    use v2::TransactionSource::{SourceClient, SourceServerCheck};
    assert_eq!(
        Code::Ok as i32,
        end(&mut client, &sent[0], Commit, SourceClient).await?.code
    );
    assert_eq!(
        Code::Ok as i32,
        end(&mut client, &sent[1], Rollback, SourceClient)
            .await?
            .code
    );
    assert_eq!(vec!["commit-me"], visible_bodies(&cluster, "g").await?);

    // A repeated commit is answered alike; a contradiction and an unknown id are refused.
    assert_eq!(
        Code::Ok as i32,
        end(&mut client, &sent[0], Commit, SourceClient).await?.code
    );
    assert_eq!(
        Code::InvalidTransactionId as i32,
        end(&mut client, &sent[1], Commit, SourceClient).await?.code
    );
    let unknown = v2::SendResultEntry {
        transaction_id: "no-such-transaction".into(),
        ..sent[0].clone()
    };
    assert_eq!(
        Code::InvalidTransactionId as i32,
        end(&mut client, &unknown, Commit, SourceClient).await?.code
    );

    // The third stays unresolved: the broker asks the producer through its stream.
    let asked = Instant::now();
    let check = loop {
        let command = tokio::time::timeout(Duration::from_secs(15), inbound.next())
            .await?
            .expect("the stream stays open")?;
        if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(check)) =
            command.command
        {
            break check;
        }
    };
    println!("check-back arrived after {:?}", asked.elapsed());
    assert_eq!(sent[2].transaction_id, check.transaction_id);
    let checked = check.message.expect("the message in question");
    assert_eq!(Some("tx"), checked.topic.as_ref().map(|t| t.name.as_str()));
    assert_eq!(
        sent[2].message_id,
        checked.system_properties.unwrap().message_id
    );
    assert_eq!(b"ask-me".as_slice(), &checked.body[..]);
    assert_eq!(
        Code::Ok as i32,
        end(&mut client, &sent[2], Commit, SourceServerCheck)
            .await?
            .code
    );
    assert_eq!(vec!["ask-me"], visible_bodies(&cluster, "g").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_nobody_resolves_is_rolled_back_after_the_last_check() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        extra_args: [
            "--transaction-check-after-secs=1",
            "--transaction-check-interval-secs=1",
            "--transaction-max-checks=2",
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic("tx", 1).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let endpoint = format!("http://{}", cluster.node(leader).client_addr);
    let mut client = MessagingServiceClient::connect(endpoint).await?;
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(8);
    commands_tx
        .send(v2::TelemetryCommand {
            status: None,
            command: Some(v2::telemetry_command::Command::Settings(v2::Settings {
                client_type: Some(v2::ClientType::Producer as i32),
                pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                    topics: vec![resource("tx")],
                    ..Default::default()
                })),
                ..Default::default()
            })),
        })
        .await?;
    let mut inbound = client
        .telemetry(with_client_id(tokio_stream::wrappers::ReceiverStream::new(
            commands_rx,
        )))
        .await?
        .into_inner();
    let reply = client
        .send_message(with_client_id(v2::SendMessageRequest {
            messages: vec![half("undecided", None)],
        }))
        .await?
        .into_inner();
    let sent = reply.entries.into_iter().next().expect("one entry");

    // The producer is asked twice and answers "unknown"; then the transaction is rolled back.
    let mut checks = 0;
    while checks < 2 {
        let command = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await?
            .expect("the stream stays open")?;
        if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(check)) =
            command.command
        {
            assert_eq!(sent.transaction_id, check.transaction_id);
            checks += 1;
            let status = end(
                &mut client,
                &sent,
                v2::TransactionResolution::Unspecified,
                v2::TransactionSource::SourceServerCheck,
            )
            .await?;
            assert_eq!(
                Code::Ok as i32,
                status.code,
                "an unknown answer changes nothing"
            );
        }
    }
    // No third question: after the interval and the leader's grace period the last check is
    // counted as unanswered and the transaction rolled back.
    let extra = tokio::time::timeout(Duration::from_secs(8), async {
        while let Some(Ok(command)) = inbound.next().await {
            if matches!(
                command.command,
                Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(_))
            ) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        !matches!(extra, Ok(true)),
        "asked more than transaction_max_checks times"
    );
    let commit = end(
        &mut client,
        &sent,
        v2::TransactionResolution::Commit,
        v2::TransactionSource::SourceClient,
    )
    .await?;
    assert_eq!(Code::InvalidTransactionId as i32, commit.code);
    assert!(commit.message.contains("rolled back"), "{}", commit.message);
    assert!(visible_bodies(&cluster, "g").await?.is_empty());
    Ok(())
}
