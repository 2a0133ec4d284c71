//! Bad input is answered with the right RocketMQ v2 code and disturbs nothing else.

use std::time::Duration;

use bytes::Bytes;
use chaos_tests::cluster::{Cluster, ClusterOptions};
use raftmq::cli::bench_connection::{BenchConnection, CallError};
use raftmq::client::{Client, ClientError, message};
use raftmq_proto::raft::v1::NodeStatusRequest;
use raftmq_proto::raft::v1::raft_service_client::RaftServiceClient;
use raftmq_proto::rocketmq::v2::{Code, HeartbeatRequest, HeartbeatResponse, Message};

const SEND_MESSAGE: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";
const HEARTBEAT: &str = "/apache.rocketmq.v2.MessagingService/Heartbeat";

fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Code {
    match result {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn send_code(client: &Client, edit: impl FnOnce(&mut Message)) -> Code {
    let mut m = message("good", b"payload".to_vec(), Some("t"), &[]);
    edit(&mut m);
    code_of(client.send(vec![m]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_bad_input_gets_its_code() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("good", 8).await?;
    // Every node answers alike: the leader, and followers forwarding to it.
    for node in 1..=3 {
        let client = cluster.node_client(node);
        let topic = |name: &str| {
            let name = name.to_string();
            move |m: &mut Message| m.topic.as_mut().unwrap().name = name
        };
        assert_eq!(
            send_code(&client, topic("bad topic!")).await,
            Code::IllegalTopic
        );
        assert_eq!(
            send_code(&client, topic(&"t".repeat(128))).await,
            Code::IllegalTopic
        );
        assert_eq!(send_code(&client, topic("")).await, Code::IllegalTopic);
        assert_eq!(
            send_code(&client, topic("unknown-topic")).await,
            Code::TopicNotFound
        );
        assert_eq!(
            code_of(client.route("unknown-topic").await),
            Code::TopicNotFound
        );
        assert_eq!(
            send_code(&client, |m| m.body = Default::default()).await,
            Code::MessageBodyEmpty
        );
        assert_eq!(
            send_code(&client, |m| m.body = vec![7u8; 4 * 1024 * 1024 + 1].into()).await,
            Code::MessageBodyTooLarge
        );
        assert_eq!(
            send_code(&client, |m| {
                for i in 0..129 {
                    m.user_properties.insert(format!("k{i}"), "v".into());
                }
            })
            .await,
            Code::MessagePropertiesTooLarge
        );
        assert_eq!(
            send_code(&client, |m| {
                m.user_properties
                    .insert("big".into(), "v".repeat(17 * 1024));
            })
            .await,
            Code::MessagePropertiesTooLarge
        );
        assert_eq!(
            send_code(&client, |m| m.system_properties = None).await,
            Code::MessageCorrupted
        );
        assert_eq!(
            send_code(&client, |m| m
                .system_properties
                .as_mut()
                .unwrap()
                .message_id
                .clear())
            .await,
            Code::IllegalMessageId
        );
        assert_eq!(
            code_of(client.send(Vec::new()).await),
            Code::MessageCorrupted
        );
        assert_eq!(
            code_of(
                client
                    .pull("bad group!", "good", 0, 0, 10, Duration::ZERO)
                    .await
            ),
            Code::IllegalConsumerGroup
        );
        assert_eq!(
            code_of(client.pull("g", "good", 99, 0, 10, Duration::ZERO).await),
            Code::BadRequest
        );
        assert_eq!(
            code_of(
                client
                    .pull("g", "unknown-topic", 0, 0, 10, Duration::ZERO)
                    .await
            ),
            Code::TopicNotFound
        );
        // The client port serves only the RocketMQ and admin services: a call meant for the
        // Raft port gets UNIMPLEMENTED, not an answer and not a dropped connection.
        let mut raft_on_client_port =
            RaftServiceClient::connect(format!("http://{}", cluster.node(node).client_addr))
                .await?;
        let status = raft_on_client_port
            .node_status(NodeStatusRequest::default())
            .await
            .expect_err("the client port must not serve the Raft service");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

        // The client port decodes SendMessage itself: a request that is not a well-formed
        // gRPC message gets INTERNAL with the reason, and the connection stays usable.
        let raw = BenchConnection::connect(&cluster.node(node).client_addr, Duration::from_secs(5))
            .await?;
        let malformed: [(&str, &[u8]); 4] = [
            ("not protobuf", &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
            ("compressed without an encoding", &[1, 0, 0, 0, 0]),
            ("a prefix longer than the message", &[0, 0, 0, 0, 9, 1]),
            ("a cut prefix", &[0, 0]),
        ];
        for (case, frame) in malformed {
            match raw.call(SEND_MESSAGE, Bytes::from_static(frame)).await {
                Err(CallError::Grpc { code, message }) => {
                    assert_eq!(code, "13", "{case}: {message}");
                    assert!(!message.is_empty(), "{case}: a reason");
                }
                other => panic!("{case}: expected INTERNAL, got {other:?}"),
            }
        }
        let heartbeat: HeartbeatResponse =
            raw.unary(HEARTBEAT, &HeartbeatRequest::default()).await?;
        assert_eq!(heartbeat.status.map(|s| s.code), Some(Code::Ok as i32));
    }

    // Nothing was stored, nothing was created, and good requests still work everywhere.
    let client = cluster.client();
    assert_eq!(client.route("good").await?.len(), 8);
    let sent = client
        .send(vec![message("good", b"fine".to_vec(), None, &[])])
        .await?;
    assert_eq!(sent.len(), 1);
    cluster.wait_caught_up(Duration::from_secs(20)).await?;
    for node in 1..=3 {
        let stored =
            chaos_tests::history::read_topic(&cluster.node_client(node), "good", 8).await?;
        assert_eq!(stored.len(), 1, "node {node} holds only the good message");
        assert_eq!(stored[0].body, "fine");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_are_auto_created_by_the_first_send_and_never_by_reads() -> anyhow::Result<()> {
    use raftmq_proto::rocketmq::v2::QueryOffsetPolicy;
    let cluster = Cluster::start(ClusterOptions {
        auto_create_topics: true,
        extra_args: vec!["--default-queues".into(), "4".into()],
        ..Default::default()
    })
    .await?;
    let client = cluster.client();
    // A consumer that starts first sees an empty topic of the default queue count, on every
    // node, and none of its calls creates the topic.
    for node in 1..=3 {
        let reader = cluster.node_client(node);
        assert_eq!(reader.route("fresh").await?.len(), 4);
        let (pulled, next) = reader.pull("g", "fresh", 3, 0, 10, Duration::ZERO).await?;
        assert!(pulled.is_empty());
        assert_eq!(next, 0);
        assert_eq!(
            reader
                .query_offset("fresh", 2, QueryOffsetPolicy::End)
                .await?,
            0
        );
        assert_eq!(reader.get_offset("g", "fresh", 0).await?, None);
        let received = reader
            .receive("g", "fresh", 8, Duration::from_secs(30), Duration::ZERO)
            .await?;
        assert!(received.is_empty());
        assert_eq!(
            code_of(reader.pull("g", "fresh", 4, 0, 10, Duration::ZERO).await),
            Code::BadRequest,
            "queue 4 is past the default queue count"
        );
    }
    assert_eq!(cluster.topics().await?, Vec::<(String, u32)>::new());

    // Pulls on every queue and a receive, all waiting on the topic that does not exist yet:
    // the first send creates it, and the pull of its queue and the receive wake with it.
    let mut pulls = tokio::task::JoinSet::new();
    for queue in 0..4 {
        let reader = cluster.node_client(2);
        pulls.spawn(async move {
            reader
                .pull("g", "fresh", queue, 0, 10, Duration::from_secs(10))
                .await
        });
    }
    let receiving = {
        let reader = cluster.node_client(3);
        tokio::spawn(async move {
            let invisible = Duration::from_secs(30);
            reader
                .receive("g2", "fresh", 8, invisible, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = client
        .send(vec![message("fresh", b"hello".to_vec(), None, &[])])
        .await?;
    assert_eq!(sent[0].offset, 0);
    let mut pulled = Vec::new();
    while pulled.is_empty()
        && let Some(done) = pulls.join_next().await
    {
        pulled = done??.0;
    }
    pulls.abort_all();
    assert_eq!(pulled.len(), 1, "a waiting pull got the first message");
    assert_eq!(pulled[0].body, "hello");
    let received = receiving.await??;
    assert_eq!(
        received.len(),
        1,
        "the waiting receive got the first message"
    );
    assert_eq!(received[0].body, "hello");
    assert_eq!(cluster.topics().await?, vec![("fresh".to_string(), 4)]);
    assert_eq!(client.route("fresh").await?.len(), 4);

    // Illegal names are still refused, not created.
    assert_eq!(
        code_of(
            client
                .send(vec![message("no/slashes", b"x".to_vec(), None, &[])])
                .await
        ),
        Code::IllegalTopic
    );
    assert_eq!(
        code_of(client.route("no/slashes").await),
        Code::IllegalTopic
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_typed_topic_accepts_only_its_message_type() -> anyhow::Result<()> {
    use raftmq_proto::admin::v1 as admin;
    use raftmq_proto::rocketmq::v2::MessageType;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let client = cluster.client();
    let create = |name: &str, message_type: &str| {
        let request = admin::CreateTopicRequest {
            name: name.into(),
            queues: 2,
            message_type: message_type.into(),
        };
        client.admin(move |mut c| {
            let request = request.clone();
            async move { c.create_topic(request).await }
        })
    };
    create("normal-only", "normal").await?;
    create("anything", "").await?;
    let refused = create("typo", "fifoo").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("unknown message type")),
        "{refused:?}"
    );

    let route = client.route("normal-only").await?;
    assert!(
        route
            .iter()
            .all(|q| q.accept_message_types == vec![MessageType::Normal as i32])
    );
    assert_eq!(
        4,
        client.route("anything").await?[0]
            .accept_message_types
            .len()
    );

    let fifo = |topic: &str| {
        let mut m = message(topic, b"ordered".to_vec(), None, &[]);
        m.system_properties.as_mut().unwrap().message_group = Some("g".into());
        m
    };
    client
        .send(vec![message("normal-only", b"plain".to_vec(), None, &[])])
        .await?;
    assert_eq!(
        Code::MessagePropertyConflictWithType,
        code_of(client.send(vec![fifo("normal-only")]).await)
    );
    client.send(vec![fifo("anything")]).await?;
    Ok(())
}
