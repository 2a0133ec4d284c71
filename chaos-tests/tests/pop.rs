//! POP consumption (ReceiveMessage / AckMessage) on a real cluster: acknowledgements and
//! deliveries in flight are replicated state, so a leader kill loses neither.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chaos_tests::cluster::{Cluster, ClusterOptions};
use raftmq::client::message;
use raftmq_proto::rocketmq::v2::{Code, QueryOffsetPolicy};

const TOPIC: &str = "pop";
const GROUP: &str = "pop-group";
const MESSAGES: usize = 300;
const INVISIBLE: Duration = Duration::from_secs(3);

fn body_of(message: &raftmq_proto::rocketmq::v2::Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_and_deliveries_in_flight_survive_a_leader_kill() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 4).await?;
    let client = cluster.client();
    for i in 0..MESSAGES {
        client
            .send(vec![message(
                TOPIC,
                format!("m-{i}").into_bytes(),
                None,
                &[],
            )])
            .await?;
    }

    let consumer = cluster.client();
    let mut acked: HashSet<String> = HashSet::new();
    // Every fifth message is left unacknowledged at its first delivery, as if the consumer
    // crashed: it must come back, with a higher attempt, also across the leader kill.
    let mut withheld: HashMap<String, i32> = HashMap::new();
    let mut redelivered_after_withholding = 0;
    let mut killed = None;
    let give_up = Instant::now() + Duration::from_secs(90);
    while acked.len() < MESSAGES {
        assert!(
            Instant::now() < give_up,
            "only {} of {MESSAGES} messages acknowledged in time\n{}",
            acked.len(),
            cluster.log_tails(30)
        );
        if killed.is_none() && acked.len() >= MESSAGES / 3 {
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
            cluster.kill_node(leader);
            killed = Some(leader);
        }
        let received = match consumer
            .receive(GROUP, TOPIC, 16, INVISIBLE, Duration::from_secs(2))
            .await
        {
            Ok(received) => received,
            // An election in progress: the client retries like an application would.
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e.into()),
        };
        let mut to_ack = Vec::new();
        for m in &received {
            let body = body_of(m);
            let props = m.system_properties.as_ref().expect("system properties");
            let attempt = props.delivery_attempt.expect("delivery attempt");
            assert!(attempt >= 1, "attempts start at 1");
            let index: usize = body.trim_start_matches("m-").parse()?;
            if let Some(first_attempt) = withheld.get(&body) {
                assert!(
                    attempt > *first_attempt,
                    "{body} came back with attempt {attempt}, not above {first_attempt}"
                );
                redelivered_after_withholding += 1;
            } else if index.is_multiple_of(5) && !acked.contains(&body) {
                withheld.insert(body, attempt);
                continue;
            }
            to_ack.push((body, props.receipt_handle.clone().expect("receipt handle")));
        }
        if to_ack.is_empty() {
            continue;
        }
        let handles: Vec<String> = to_ack.iter().map(|(_, h)| h.clone()).collect();
        let statuses = match consumer.ack(GROUP, TOPIC, &handles).await {
            Ok(statuses) => statuses,
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e.into()),
        };
        for ((body, _), status) in to_ack.into_iter().zip(statuses) {
            // A handle can go stale when its invisibility ran out during the failover: the
            // message is then delivered again and acknowledged later.
            if status.code == Code::Ok as i32 {
                acked.insert(body);
            }
        }
    }
    assert_eq!(MESSAGES / 5, withheld.len());
    assert!(
        redelivered_after_withholding >= withheld.len(),
        "every withheld message came back"
    );

    // Nothing acknowledged comes back once its invisibility has passed: no ack was lost.
    tokio::time::sleep(INVISIBLE + Duration::from_secs(1)).await;
    let again = consumer
        .receive(GROUP, TOPIC, 32, INVISIBLE, Duration::from_secs(1))
        .await?;
    assert!(
        again.is_empty(),
        "acknowledged messages were delivered again: {:?}",
        again.iter().map(body_of).collect::<Vec<_>>()
    );

    // Every node, the restarted one included, holds the same consumer progress: all consumed.
    cluster.start_node(killed.expect("the leader was killed"))?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    for node in 1..=3 {
        let node_client = cluster.node_client(node);
        for queue in 0..4 {
            let end = node_client
                .query_offset(TOPIC, queue, QueryOffsetPolicy::End)
                .await?;
            let committed = node_client.get_offset(GROUP, TOPIC, queue).await?;
            assert_eq!(Some(end), committed, "node {node} queue {queue}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_receive_wakes_on_a_send_and_bad_receipts_are_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("wake", 2).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let reader = cluster.node_client(follower);
    let started = Instant::now();
    let receive = tokio::spawn(async move {
        reader
            .receive(
                "g",
                "wake",
                8,
                Duration::from_secs(30),
                Duration::from_secs(15),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!receive.is_finished(), "an empty topic holds the receive");
    cluster
        .client()
        .send(vec![message("wake", b"hello".to_vec(), Some("T"), &[])])
        .await?;
    let received = receive.await??;
    assert!(started.elapsed() < Duration::from_secs(10), "woke early");
    assert_eq!(1, received.len());
    let props = received[0].system_properties.clone().unwrap();
    assert_eq!(Some(1), props.delivery_attempt);
    assert_eq!(Some("T".to_string()), props.tag);

    let client = cluster.client();
    let handle = props.receipt_handle.unwrap();
    let statuses = client
        .ack("g", "wake", &[handle.clone(), "not-a-handle".into()])
        .await?;
    let codes: Vec<i32> = statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        vec![Code::Ok as i32, Code::InvalidReceiptHandle as i32],
        codes
    );
    // Another group has its own progress and still gets the message.
    let other = client
        .receive(
            "g2",
            "wake",
            8,
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(1, other.len());
    Ok(())
}

fn delayed(topic: &str, body: &str, deliver_at_ms: i64) -> raftmq_proto::rocketmq::v2::Message {
    let mut m = message(topic, body.as_bytes().to_vec(), None, &[]);
    m.system_properties.as_mut().unwrap().delivery_timestamp = Some(prost_types::Timestamp {
        seconds: deliver_at_ms.div_euclid(1000),
        nanos: (deliver_at_ms.rem_euclid(1000) * 1_000_000) as i32,
    });
    m
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Receive until `count` messages arrived; returns (body, arrival ms) in arrival order.
async fn receive_all(
    client: &raftmq::client::Client,
    group: &str,
    topic: &str,
    count: usize,
    give_up: Instant,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut arrived = Vec::new();
    while arrived.len() < count {
        anyhow::ensure!(Instant::now() < give_up, "only {arrived:?} arrived in time");
        let received = match client
            .receive(
                group,
                topic,
                32,
                Duration::from_secs(30),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(received) => received,
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e.into()),
        };
        let now = epoch_ms();
        let handles: Vec<String> = received
            .iter()
            .filter_map(|m| m.system_properties.as_ref()?.receipt_handle.clone())
            .collect();
        arrived.extend(received.iter().map(|m| (body_of(m), now)));
        if !handles.is_empty() {
            client.ack(group, topic, &handles).await?;
        }
    }
    Ok(arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_messages_arrive_at_their_time_also_after_a_leader_kill() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("delay", 2).await?;
    let client = cluster.client();
    let consumer = cluster.client();

    // Light load: each message shows up no earlier than its time and soon after it.
    let base = epoch_ms() + 1_500;
    let schedule = [("d-3", base + 900), ("d-1", base), ("d-2", base + 450)];
    for (body, at) in schedule {
        client.send(vec![delayed("delay", body, at)]).await?;
    }
    client
        .send(vec![message("delay", b"now".to_vec(), None, &[])])
        .await?;
    let give_up = Instant::now() + Duration::from_secs(20);
    let arrived = receive_all(&consumer, "g", "delay", 4, give_up).await?;
    let order: Vec<&str> = arrived.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(vec!["now", "d-1", "d-2", "d-3"], order);
    for (body, at) in schedule {
        let (_, arrival) = arrived.iter().find(|(b, _)| b == body).unwrap();
        let late = arrival - at;
        println!("{body}: arrived {late} ms after its delivery time");
        assert!(late >= 0, "{body} arrived {} ms early", -late);
        assert!(
            late <= 100,
            "{body} arrived {late} ms late under light load"
        );
    }

    // Timers are replicated: they fire under the next leader.
    let at = epoch_ms() + 2_000;
    client
        .send(vec![delayed("delay", "after-failover", at)])
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.kill_node(leader);
    let give_up = Instant::now() + Duration::from_secs(20);
    let arrived = receive_all(&consumer, "g", "delay", 1, give_up).await?;
    assert_eq!("after-failover", arrived[0].0);
    assert!(arrived[0].1 >= at, "not before its time");

    // Absurd delivery times are refused (milliseconds sent as seconds).
    let err = client
        .send(vec![delayed("delay", "far", epoch_ms() * 1000)])
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("ILLEGAL_DELIVERY_TIME") || err.to_string().contains("delivery"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_consumer_deliveries_are_renewed_until_acknowledged() -> anyhow::Result<()> {
    use raftmq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
    use raftmq_proto::rocketmq::v2::{self as v2, receive_message_response::Content};
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--push-invisible-secs=2".into()],
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic("renew", 1).await?;
    let client = cluster.client();
    client
        .send(vec![message(
            "renew",
            b"slow to process".to_vec(),
            None,
            &[],
        )])
        .await?;

    // A push consumer's receive: auto_renew, no invisible duration.
    let endpoint = format!("http://{}", cluster.node(1).client_addr);
    let mut push = MessagingServiceClient::connect(endpoint).await?;
    let mut stream = push
        .receive_message(v2::ReceiveMessageRequest {
            group: Some(raftmq::client::resource("push")),
            message_queue: Some(raftmq::client::queue("renew", -1)),
            filter_expression: None,
            batch_size: 32,
            invisible_duration: None,
            auto_renew: true,
            long_polling_timeout: prost_types::Duration::try_from(Duration::from_secs(5)).ok(),
            attempt_id: None,
        })
        .await?
        .into_inner();
    let mut handle = None;
    while let Some(frame) = stream.message().await? {
        if let Some(Content::Message(m)) = frame.content {
            handle = m.system_properties.and_then(|p| p.receipt_handle);
        }
    }
    let handle = handle.expect("the message was delivered");

    // Three invisible periods later it has not come back: the broker renewed it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = client
        .receive(
            "push",
            "renew",
            32,
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .await?;
    assert!(again.is_empty(), "a renewed delivery stays invisible");
    let statuses = client.ack("push", "renew", &[handle]).await?;
    assert_eq!(
        Code::Ok as i32,
        statuses[0].code,
        "the original handle still acks"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_ack = client
        .receive(
            "push",
            "renew",
            32,
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .await?;
    assert!(after_ack.is_empty(), "acknowledged for good");
    Ok(())
}
