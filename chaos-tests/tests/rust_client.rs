//! The official RocketMQ 5 Rust client (`rocketmq` 5.0.0 from crates.io) against a real
//! three-node cluster: its `Producer` and `SimpleConsumer`, unmodified, are what a user of the
//! broker would run. Things the client is known to do (see the protocol notes, section 6.1):
//! it never refreshes a route, spreads data-plane calls over every address of the route's
//! `broker.endpoints`, does not retry sends, and panics (often inside a background task) on
//! some malformed replies, so every test also checks that the client never panicked.
//!
//! Each test starts its own cluster. Run with nextest (one process per test) or
//! `cargo test -p chaos-tests --test rust_client -- --test-threads 1`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use chaos_tests::cluster::{Cluster, ClusterOptions};
use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::error::ClientError;
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::{MessageBuilder, MessageView};
use rocketmq::{Producer, SimpleConsumer};

/// Long-polling option of the consumers in most tests: short, so that a receive that finds
/// nothing returns quickly (the broker must answer before this deadline).
const POLL: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Panics inside the client (often in its background tasks, where they do not fail a test).

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Record every panic of the process (the client's spawned tasks included), then report it
/// as the default hook does. Returns a mark for [`assert_no_client_panic`]: the panics
/// recorded before it belong to earlier tests of the same process (`cargo test`).
fn watch_panics() -> usize {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let entry = format!("[thread {:?}] {info}", thread.name().unwrap_or("?"));
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(entry);
            }
            default(info);
        }));
    });
    PANICS.lock().map(|p| p.len()).unwrap_or_default()
}

/// No panic since `mark` (from [`watch_panics`]).
fn assert_no_client_panic(mark: usize) {
    let panics = PANICS
        .lock()
        .map(|p| p.get(mark..).unwrap_or_default().to_vec())
        .unwrap_or_default();
    assert!(
        panics.is_empty(),
        "the rocketmq client panicked {} time(s):\n{}",
        panics.len(),
        panics.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Client set-up.

fn describe(error: &ClientError) -> String {
    match error.source() {
        Some(source) => format!("{error} (source: {source:#})"),
        None => error.to_string(),
    }
}

fn client_option(access_url: &str, long_polling: Duration) -> ClientOption {
    let mut option = ClientOption::default();
    option.set_access_url(access_url);
    option.set_enable_tls(false);
    option.set_timeout(Duration::from_secs(3));
    option.set_long_polling_timeout(long_polling);
    option
}

async fn start_producer(access_url: &str, topics: &[&str]) -> anyhow::Result<Producer> {
    let mut option = ProducerOption::default();
    option.set_topics(topics.to_vec());
    let mut producer = Producer::new(option, client_option(access_url, POLL))
        .map_err(|e| anyhow::anyhow!("Producer::new: {}", describe(&e)))?;
    tokio::time::timeout(Duration::from_secs(20), producer.start())
        .await
        .context("Producer::start hung (Telemetry headers or QueryRoute never answered)")?
        .map_err(|e| anyhow::anyhow!("Producer::start: {}", describe(&e)))?;
    Ok(producer)
}

async fn start_consumer(
    access_url: &str,
    group: &str,
    topics: &[&str],
    long_polling: Duration,
) -> anyhow::Result<SimpleConsumer> {
    let mut option = SimpleConsumerOption::default();
    option.set_consumer_group(group);
    option.set_topics(topics.to_vec());
    let mut consumer = SimpleConsumer::new(option, client_option(access_url, long_polling))
        .map_err(|e| anyhow::anyhow!("SimpleConsumer::new: {}", describe(&e)))?;
    tokio::time::timeout(Duration::from_secs(20), consumer.start())
        .await
        .context("SimpleConsumer::start hung (Telemetry headers or QueryRoute never answered)")?
        .map_err(|e| anyhow::anyhow!("SimpleConsumer::start: {}", describe(&e)))?;
    Ok(consumer)
}

fn all_tags() -> FilterExpression {
    FilterExpression::new(FilterType::Tag, "*")
}

/// One receive, bounded by the client's long-polling deadline plus a margin.
async fn receive(
    consumer: &SimpleConsumer,
    topic: &str,
    filter: &FilterExpression,
    batch: i32,
    invisible: Duration,
) -> anyhow::Result<Vec<MessageView>> {
    match tokio::time::timeout(
        Duration::from_secs(45),
        consumer.receive_with(topic, filter, batch, invisible),
    )
    .await
    {
        Ok(Ok(messages)) => Ok(messages),
        Ok(Err(e)) => bail!("receive from {topic} failed: {}", describe(&e)),
        Err(_) => bail!("receive from {topic} did not return within 45 s"),
    }
}

async fn ack(consumer: &SimpleConsumer, message: &MessageView) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), consumer.ack(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!(
            "ack of {} (attempt {}) failed: {}",
            message.message_id(),
            message.delivery_attempt(),
            describe(&e)
        ),
        Err(_) => bail!("ack of {} hung", message.message_id()),
    }
}

fn body_of(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7)) as u8)
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a test sent, to compare with what comes back.
#[derive(Clone, Debug)]
struct Sent {
    tag: Option<String>,
    keys: Vec<String>,
    properties: HashMap<String, String>,
    body: Vec<u8>,
}

/// Build and send one NORMAL message; returns its message id.
async fn send_normal(producer: &Producer, topic: &str, sent: &Sent) -> anyhow::Result<String> {
    let mut builder = MessageBuilder::builder()
        .set_topic(topic)
        .set_body(sent.body.clone());
    if let Some(tag) = &sent.tag {
        builder = builder.set_tag(tag.clone());
    }
    if !sent.keys.is_empty() {
        builder = builder.set_keys(sent.keys.clone());
    }
    if !sent.properties.is_empty() {
        builder = builder.set_properties(sent.properties.clone());
    }
    let message = builder
        .build()
        .map_err(|e| anyhow::anyhow!("build message: {}", describe(&e)))?;
    let receipt = tokio::time::timeout(Duration::from_secs(15), producer.send(message))
        .await
        .context("send hung")?
        .map_err(|e| anyhow::anyhow!("send to {topic}: {}", describe(&e)))?;
    ensure!(
        !receipt.message_id().trim().is_empty(),
        "the send receipt has no message id"
    );
    Ok(receipt.message_id().to_string())
}

/// Check one delivered message against what was sent.
fn check_delivered(topic: &str, message: &MessageView, sent: &Sent, attempt: i32) {
    let id = message.message_id();
    assert_eq!(message.topic(), topic, "topic of {id}");
    assert_eq!(message.tag(), sent.tag.as_deref(), "tag of {id}");
    assert_eq!(message.keys(), &sent.keys[..], "keys of {id}");
    assert_eq!(
        message.properties(),
        &sent.properties,
        "user properties of {id}"
    );
    assert_eq!(
        message.message_group(),
        None,
        "message group of NORMAL message {id}"
    );
    assert_eq!(
        message.delivery_attempt(),
        attempt,
        "delivery attempt of {id}"
    );
    assert!(
        message.body() == &sent.body[..],
        "body of {id}: got {} bytes, sent {} bytes (first difference at {:?})",
        message.body().len(),
        sent.body.len(),
        message
            .body()
            .iter()
            .zip(&sent.body)
            .position(|(a, b)| a != b)
    );
    assert!(
        !message.born_host().is_empty(),
        "born host of {id} is empty"
    );
    assert!(
        (message.born_timestamp() - now_secs()).abs() < 600,
        "born timestamp of {id} is {} s, now is {} s",
        message.born_timestamp(),
        now_secs()
    );
}

// ---------------------------------------------------------------------------------------
// Producer.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_producer_sends_normal_messages_of_every_size() -> anyhow::Result<()> {
    let panics = watch_panics();
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("rc-produce", 4).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &["rc-produce"]).await?;

    let mut ids = HashSet::new();
    // From one byte up to 3 MiB, the largest a Rust consumer can also take back (a gRPC frame
    // over 4 MiB is refused by the client's decoder).
    for (i, size) in [1, 100, 4096, 64 << 10, 1 << 20, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let sent = Sent {
            tag: Some("TagA".into()),
            keys: vec![format!("key-{i}"), format!("order-{i}")],
            properties: HashMap::from([
                ("size".to_string(), size.to_string()),
                ("index".to_string(), i.to_string()),
            ]),
            body: body_of(size, i),
        };
        let id = send_normal(&producer, "rc-produce", &sent)
            .await
            .with_context(|| format!("{size}-byte message\n{}", cluster.log_tails(30)))?;
        assert!(ids.insert(id.clone()), "message id {id} returned twice");
    }

    // A batch of messages of one topic in one SendMessage: one receipt per message.
    let batch: Vec<_> = (0..5)
        .map(|i| {
            MessageBuilder::builder()
                .set_topic("rc-produce")
                .set_tag("TagB")
                .set_body(format!("batch-{i}").into_bytes())
                .build()
                .expect("valid message")
        })
        .collect();
    let receipts = producer
        .batch_send(batch)
        .await
        .map_err(|e| anyhow::anyhow!("batch_send: {}\n{}", describe(&e), cluster.log_tails(30)))?;
    assert_eq!(receipts.len(), 5, "one receipt per message of the batch");
    for receipt in &receipts {
        assert!(
            !receipt.message_id().is_empty(),
            "a batch receipt has no id"
        );
        assert!(
            ids.insert(receipt.message_id().to_string()),
            "message id {} returned twice",
            receipt.message_id()
        );
    }

    // A topic that does not exist: an error (QueryRoute is refused), not a panic.
    let missing = MessageBuilder::builder()
        .set_topic("rc-no-such-topic")
        .set_body(b"x".to_vec())
        .build()
        .expect("valid message");
    let refused = producer.send(missing).await;
    assert!(refused.is_err(), "a send to a missing topic succeeded");

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// SimpleConsumer.

/// Receive until every message of `sent` has come once, each as a first delivery with what
/// was sent, acknowledging each; at most 40 s.
async fn receive_each_once(
    consumer: &SimpleConsumer,
    topic: &str,
    sent: &HashMap<String, Sent>,
    cluster: &Cluster,
) -> anyhow::Result<()> {
    let mut received: HashSet<String> = HashSet::new();
    let give_up = Instant::now() + Duration::from_secs(40);
    while received.len() < sent.len() {
        ensure!(
            Instant::now() < give_up,
            "received {} of {} messages after 40 s; missing {:?}\n{}",
            received.len(),
            sent.len(),
            sent.keys()
                .filter(|id| !received.contains(*id))
                .collect::<Vec<_>>(),
            cluster.log_tails(30)
        );
        let messages = receive(consumer, topic, &all_tags(), 32, Duration::from_secs(4))
            .await
            .with_context(|| cluster.log_tails(30))?;
        for message in &messages {
            let id = message.message_id().to_string();
            let expected = sent
                .get(&id)
                .unwrap_or_else(|| panic!("received {id}, which was never sent"));
            assert!(received.insert(id.clone()), "{id} was delivered twice");
            check_delivered(topic, message, expected, 1);
            ack(consumer, message).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_group_receives_everything_sent_before_it_started() -> anyhow::Result<()> {
    let panics = watch_panics();
    const TOPIC: &str = "rc-roundtrip";
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 4).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &[TOPIC]).await?;

    // Sent before any consumer of the group exists: a new group starts at the earliest offset.
    let sizes = [
        1,
        2,
        10,
        100,
        1000,
        4096,
        16 << 10,
        64 << 10,
        1 << 20,
        3 << 20,
    ];
    let mut sent: HashMap<String, Sent> = HashMap::new();
    for i in 0..20 {
        let message = Sent {
            tag: Some(if i % 2 == 0 { "TagA" } else { "TagB" }.to_string()),
            keys: vec![format!("rt-{i}")],
            properties: HashMap::from([
                ("index".to_string(), i.to_string()),
                ("color".to_string(), "blue".to_string()),
            ]),
            body: body_of(sizes[i % sizes.len()], i),
        };
        let id = send_normal(&producer, TOPIC, &message).await?;
        sent.insert(id, message);
    }
    // And one with nothing but a body.
    let bare = Sent {
        tag: None,
        keys: Vec::new(),
        properties: HashMap::new(),
        body: b"bare".to_vec(),
    };
    let id = send_normal(&producer, TOPIC, &bare).await?;
    sent.insert(id, bare);

    let consumer = start_consumer(&access, "rc-roundtrip-g", &[TOPIC], POLL).await?;
    receive_each_once(&consumer, TOPIC, &sent, &cluster)
        .await
        .context("the first receive")?;

    // Acknowledged messages never come back, not even after their invisible duration (4 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = receive(&consumer, TOPIC, &all_tags(), 32, Duration::from_secs(4)).await?;
    assert!(
        again.is_empty(),
        "acknowledged messages were delivered again: {:?}",
        again
            .iter()
            .map(|m| (m.message_id(), m.delivery_attempt()))
            .collect::<Vec<_>>()
    );

    // A simple consumer's progress is its group's committed offset: everything acknowledged,
    // so `admin group describe` shows no lag in any of the topic's queues.
    let group_json = || -> anyhow::Result<serde_json::Value> {
        let output = std::process::Command::new(chaos_tests::cluster::raftmq_binary()?)
            .args(["admin", "group", "describe", "rc-roundtrip-g", "--json"])
            .args(["--endpoints", &access])
            .output()?;
        serde_json::from_slice(&output.stdout)
            .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let describe_group = || -> anyhow::Result<(usize, u64, u64)> {
        let progress = group_json()?;
        let queues = progress["queues"].as_array().context("queues")?;
        let committed = queues
            .iter()
            .map(|q| q["committed_offset"].as_u64().unwrap_or(0))
            .sum();
        let lag = progress["lag"].as_u64().context("lag")?;
        Ok((queues.len(), committed, lag))
    };
    assert_eq!((4, sent.len() as u64, 0), describe_group()?);
    // The running consumer is listed among the group's consumers online, as a simple consumer
    // of the topic.
    let clients = group_json()?["clients"].clone();
    let [client] = clients.as_array().map(Vec::as_slice).unwrap_or(&[]) else {
        anyhow::bail!("one consumer online expected: {clients}");
    };
    assert_eq!(client["kind"], "simple", "{client}");
    assert_eq!(client["topics"], serde_json::json!([TOPIC]), "{client}");

    // Its progress lives in the pop records. A reset to the earliest moves them back, with the
    // consumer still running: it receives every message again, each once, as a first delivery.
    let output = std::process::Command::new(chaos_tests::cluster::raftmq_binary()?)
        .args([
            "admin",
            "group",
            "reset-offsets",
            "rc-roundtrip-g",
            "--topic",
            TOPIC,
        ])
        .args(["--to-earliest", "--endpoints", &access])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!((4, 0, sent.len() as u64), describe_group()?);
    receive_each_once(&consumer, TOPIC, &sent, &cluster)
        .await
        .context("the replay after the reset")?;
    assert_eq!((4, sent.len() as u64, 0), describe_group()?);

    // That reset is a Raft command older versions do not know, proposed only once every member
    // says it applies it: with node 3 silent, it is refused, and nothing moves.
    cluster.pause_node(3, true)?;
    let endpoints = cluster.endpoints();
    let output = std::process::Command::new(chaos_tests::cluster::raftmq_binary()?)
        .args(["admin", "group", "reset-offsets", "rc-roundtrip-g"])
        .args([
            "--topic",
            TOPIC,
            "--to-earliest",
            "--endpoints",
            &endpoints[0],
        ])
        .output()?;
    cluster.pause_node(3, false)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("while node 3 does not answer")
            && stderr.contains("(FailedPrecondition)"),
        "{stderr}"
    );
    assert_eq!((4, sent.len() as u64, 0), describe_group()?);

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    consumer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_filter_delivers_only_matching_messages() -> anyhow::Result<()> {
    let panics = watch_panics();
    const TOPIC: &str = "rc-tags";
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 2).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &[TOPIC]).await?;

    let mut by_tag: HashMap<Option<&str>, HashSet<String>> = HashMap::new();
    for i in 0..30 {
        let tag = match i % 3 {
            0 => Some("TagA"),
            1 => Some("TagB"),
            _ => None,
        };
        let message = Sent {
            tag: tag.map(str::to_string),
            keys: Vec::new(),
            properties: HashMap::new(),
            body: format!("tags-{i}").into_bytes(),
        };
        let id = send_normal(&producer, TOPIC, &message).await?;
        by_tag.entry(tag).or_default().insert(id);
    }

    // Group 1 wants TagA only; group 2 wants everything (untagged messages included).
    let only_a = start_consumer(&access, "rc-tags-a", &[TOPIC], POLL).await?;
    let everything = start_consumer(&access, "rc-tags-all", &[TOPIC], POLL).await?;
    for (consumer, filter, wanted) in [
        (
            &only_a,
            FilterExpression::new(FilterType::Tag, "TagA"),
            by_tag[&Some("TagA")].clone(),
        ),
        (
            &everything,
            all_tags(),
            by_tag.values().flatten().cloned().collect::<HashSet<_>>(),
        ),
    ] {
        let mut received = HashSet::new();
        let give_up = Instant::now() + Duration::from_secs(30);
        // Keep receiving until everything wanted arrived, then once more to see that nothing
        // else does.
        let mut extra_round = false;
        loop {
            if received.len() == wanted.len() {
                if extra_round {
                    break;
                }
                extra_round = true;
            }
            assert!(
                Instant::now() < give_up,
                "filter {:?}: received {} of {} after 30 s\n{}",
                filter.expression(),
                received.len(),
                wanted.len(),
                cluster.log_tails(30)
            );
            let messages = receive(consumer, TOPIC, &filter, 32, Duration::from_secs(20)).await?;
            for message in &messages {
                let id = message.message_id().to_string();
                assert!(
                    wanted.contains(&id),
                    "filter {:?} delivered {id} with tag {:?}",
                    filter.expression(),
                    message.tag()
                );
                assert!(received.insert(id.clone()), "{id} delivered twice");
                ack(consumer, message).await?;
            }
        }
    }

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    only_a
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    everything
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_receive_wakes_for_a_message_on_any_queue_and_an_idle_one_ends_empty()
-> anyhow::Result<()> {
    let panics = watch_panics();
    const TOPIC: &str = "rc-poll";
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 4).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &[TOPIC]).await?;
    // The client's defaults: a 40 s long poll, which is also the call's gRPC deadline; the
    // broker holds a receive at most 20 s.
    let consumer = Arc::new(
        start_consumer(
            &access,
            "rc-poll-g",
            &[TOPIC],
            *ClientOption::default().long_polling_timeout(),
        )
        .await?,
    );

    // Whatever queue the client asked for, the one message of the topic wakes it.
    for round in 0..4 {
        let waiting = {
            let consumer = consumer.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = consumer
                    .receive_with(TOPIC, &all_tags(), 32, Duration::from_secs(30))
                    .await;
                (result, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !waiting.is_finished(),
            "round {round}: an empty topic holds the receive"
        );
        let body = format!("wake-{round}").into_bytes();
        let sent = Sent {
            tag: None,
            keys: Vec::new(),
            properties: HashMap::new(),
            body: body.clone(),
        };
        let id = send_normal(&producer, TOPIC, &sent).await?;
        let (result, waited) = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .context("the waiting receive never returned")??;
        let messages = result.map_err(|e| {
            anyhow::anyhow!(
                "round {round}: receive: {}\n{}",
                describe(&e),
                cluster.log_tails(30)
            )
        })?;
        assert_eq!(
            messages.iter().map(|m| m.message_id()).collect::<Vec<_>>(),
            vec![id.as_str()],
            "round {round}: the waiting receive returns the new message (after {waited:?})"
        );
        assert!(
            waited < Duration::from_secs(8),
            "round {round}: the receive woke {waited:?} after it started, not at the send"
        );
        ack(&consumer, &messages[0]).await?;
    }

    // Nothing left: the long poll ends with an empty answer before the client's deadline.
    let started = Instant::now();
    let idle = consumer
        .receive_with(TOPIC, &all_tags(), 32, Duration::from_secs(30))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "an idle receive failed instead of answering empty after {:?}: {}",
                started.elapsed(),
                describe(&e)
            )
        })?;
    assert!(
        idle.is_empty(),
        "an idle receive returned {} messages",
        idle.len()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_secs(25),
        "an idle receive with a 40 s long poll returned after {waited:?} (expected the broker's 20 s cap)"
    );

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    Arc::try_unwrap(consumer)
        .map_err(|_| anyhow::anyhow!("consumer still shared"))?
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unacknowledged_message_comes_back_after_its_invisible_duration() -> anyhow::Result<()> {
    let panics = watch_panics();
    const TOPIC: &str = "rc-invisible";
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 2).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &[TOPIC]).await?;
    let sent = Sent {
        tag: Some("TagA".into()),
        keys: vec!["again".into()],
        properties: HashMap::from([("p".to_string(), "v".to_string())]),
        body: b"come back".to_vec(),
    };
    let id = send_normal(&producer, TOPIC, &sent).await?;
    let consumer = start_consumer(&access, "rc-invisible-g", &[TOPIC], POLL).await?;
    let invisible = Duration::from_secs(2);

    // First delivery, left unacknowledged.
    let give_up = Instant::now() + Duration::from_secs(20);
    let first = loop {
        assert!(
            Instant::now() < give_up,
            "the message was never delivered\n{}",
            cluster.log_tails(30)
        );
        let mut messages = receive(&consumer, TOPIC, &all_tags(), 32, invisible).await?;
        if let Some(message) = messages.pop() {
            assert!(messages.is_empty(), "one message was sent, more came back");
            break message;
        }
    };
    let first_at = Instant::now();
    assert_eq!(first.message_id(), id);
    check_delivered(TOPIC, &first, &sent, 1);

    // It comes back once the invisible duration is over, as attempt 2, and not before.
    let give_up = Instant::now() + Duration::from_secs(20);
    let second = loop {
        assert!(
            Instant::now() < give_up,
            "the unacknowledged message did not come back within 20 s\n{}",
            cluster.log_tails(30)
        );
        let mut messages = receive(&consumer, TOPIC, &all_tags(), 32, invisible).await?;
        if let Some(message) = messages.pop() {
            assert!(messages.is_empty(), "one message was sent, more came back");
            break message;
        }
    };
    let back_after = first_at.elapsed();
    assert!(
        back_after >= invisible - Duration::from_millis(300),
        "redelivered after {back_after:?}, before its invisible duration of {invisible:?}"
    );
    assert_eq!(second.message_id(), id, "the same message comes back");
    check_delivered(TOPIC, &second, &sent, 2);

    // The latest delivery's handle acknowledges it; then it never comes back.
    ack(&consumer, &second)
        .await
        .with_context(|| cluster.log_tails(30))?;
    // The first delivery's handle is stale now: whatever the broker answers, the client must
    // not panic on it.
    let stale = consumer.ack(&first).await;
    eprintln!(
        "ack with the stale handle of the first delivery: {:?}",
        stale.as_ref().map_err(describe)
    );
    tokio::time::sleep(invisible + Duration::from_secs(1)).await;
    let after = receive(&consumer, TOPIC, &all_tags(), 32, invisible).await?;
    assert!(
        after.is_empty(),
        "an acknowledged message came back: {:?}",
        after
            .iter()
            .map(|m| (m.message_id(), m.delivery_attempt()))
            .collect::<Vec<_>>()
    );

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    consumer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_delivered_at_most_max_attempts_times_then_dead_lettered() -> anyhow::Result<()>
{
    let panics = watch_panics();
    const TOPIC: &str = "rc-dlq";
    const GROUP: &str = "rc-dlq-g";
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 2).await?;
    cluster.create_group(GROUP, false, 2).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &[TOPIC]).await?;
    let sent = Sent {
        tag: Some("Poison".into()),
        keys: vec!["poison".into()],
        properties: HashMap::new(),
        body: b"never acknowledged".to_vec(),
    };
    let id = send_normal(&producer, TOPIC, &sent).await?;
    let consumer = start_consumer(&access, GROUP, &[TOPIC], POLL).await?;
    let invisible = Duration::from_secs(2);

    // Attempts 1 and 2 (the group's maximum), neither acknowledged.
    let mut attempts = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    while attempts.len() < 2 {
        assert!(
            Instant::now() < give_up,
            "deliveries so far: {attempts:?}\n{}",
            cluster.log_tails(30)
        );
        for message in receive(&consumer, TOPIC, &all_tags(), 32, invisible).await? {
            assert_eq!(message.message_id(), id);
            attempts.push(message.delivery_attempt());
        }
    }
    assert_eq!(attempts, vec![1, 2], "delivery attempts");

    // No third delivery, even well after the second one's invisible duration.
    let quiet_until = Instant::now() + invisible * 3;
    while Instant::now() < quiet_until {
        let messages = receive(&consumer, TOPIC, &all_tags(), 32, invisible).await?;
        assert!(
            messages.is_empty(),
            "delivered again after max_delivery_attempts=2: attempts {:?}",
            messages
                .iter()
                .map(|m| m.delivery_attempt())
                .collect::<Vec<_>>()
        );
    }

    // The message is in the group's dead-letter topic, where another group can read it.
    let dlq = format!("%DLQ%{GROUP}");
    let reader = start_consumer(&access, "rc-dlq-reader", &[dlq.as_str()], POLL)
        .await
        .with_context(|| format!("a consumer of {dlq}"))?;
    let give_up = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        assert!(
            Instant::now() < give_up,
            "nothing in {dlq} after 20 s\n{}",
            cluster.log_tails(30)
        );
        if let Some(message) = receive(&reader, &dlq, &all_tags(), 32, Duration::from_secs(10))
            .await?
            .pop()
        {
            break message;
        }
    };
    assert_eq!(
        dead.body(),
        &sent.body[..],
        "body of the dead-lettered message"
    );
    assert_eq!(
        dead.keys(),
        &sent.keys[..],
        "keys of the dead-lettered message"
    );
    ack(&reader, &dead).await?;

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    consumer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    reader
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// FIFO.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifo_group_receives_each_message_group_in_send_order() -> anyhow::Result<()> {
    let panics = watch_panics();
    const TOPIC: &str = "rc-fifo";
    const GROUP: &str = "rc-fifo-g";
    const GROUPS: usize = 10;
    const PER_GROUP: usize = 12;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 4).await?;
    cluster.create_group(GROUP, true, 17).await?;
    let access = cluster.endpoints().join(",");
    let producer = start_producer(&access, &[TOPIC]).await?;

    // Interleaved across message groups; within a group each send completes before the next.
    let mut ids: HashMap<String, (usize, usize)> = HashMap::new();
    for seq in 0..PER_GROUP {
        for group in 0..GROUPS {
            let message = MessageBuilder::fifo_message_builder(
                TOPIC,
                format!("g{group}:{seq}").into_bytes(),
                format!("order-{group}"),
            )
            .set_tag("Fifo")
            .build()
            .map_err(|e| anyhow::anyhow!("build: {}", describe(&e)))?;
            let receipt = producer.send(message).await.map_err(|e| {
                anyhow::anyhow!("send: {}\n{}", describe(&e), cluster.log_tails(30))
            })?;
            ids.insert(receipt.message_id().to_string(), (group, seq));
        }
    }

    let consumer = start_consumer(&access, GROUP, &[TOPIC], POLL).await?;
    let parse = |message: &MessageView| -> (usize, usize) {
        let id = message.message_id().to_string();
        let (group, seq) = *ids
            .get(&id)
            .unwrap_or_else(|| panic!("received {id}, which was never sent"));
        assert_eq!(
            message.message_group(),
            Some(format!("order-{group}").as_str()),
            "message group of {id}"
        );
        assert_eq!(
            message.body(),
            format!("g{group}:{seq}").as_bytes(),
            "body of {id}"
        );
        (group, seq)
    };

    // Phase 1: a first batch, left unacknowledged with a short invisible duration. While its
    // messages are in flight, a second receive must not hand out anything later of their
    // message groups. (The invisible duration outlasts the second receive's long poll, so
    // that nothing of the first batch can legitimately come back to it.)
    let short = POLL + Duration::from_secs(3);
    let give_up = Instant::now() + Duration::from_secs(20);
    let first = loop {
        assert!(
            Instant::now() < give_up,
            "nothing delivered\n{}",
            cluster.log_tails(30)
        );
        let batch = receive(&consumer, TOPIC, &all_tags(), 32, short).await?;
        if !batch.is_empty() {
            break batch;
        }
    };
    let mut in_flight: HashSet<usize> = HashSet::new();
    let mut last_in_batch: HashMap<usize, usize> = HashMap::new();
    for message in &first {
        let (group, seq) = parse(message);
        if let Some(previous) = last_in_batch.insert(group, seq) {
            assert_eq!(
                seq,
                previous + 1,
                "group {group} out of order within one batch"
            );
        } else {
            assert_eq!(seq, 0, "group {group} starts at its first message");
        }
        in_flight.insert(group);
    }
    let second = receive(&consumer, TOPIC, &all_tags(), 32, Duration::from_secs(30)).await?;
    for message in &second {
        let (group, seq) = parse(message);
        assert!(
            !in_flight.contains(&group),
            "message {seq} of group {group} was delivered while an earlier one of its group was \
             in flight (first batch: {:?})",
            first.iter().map(&parse).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "FIFO batches (group, seq): first {:?}, second {:?}",
        first.iter().map(&parse).collect::<Vec<_>>(),
        second.iter().map(&parse).collect::<Vec<_>>()
    );
    // The second batch is processed normally (acknowledged in order); the first one expires.
    let mut acked: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for message in &second {
        let (group, seq) = parse(message);
        ack(&consumer, message).await?;
        acked.entry(group).or_default().push(seq);
    }

    // Phase 2: receive and acknowledge everything, in the order received. The first batch's
    // messages come back (attempt 2) before anything later of their groups.
    let mut redelivered = 0;
    let give_up = Instant::now() + Duration::from_secs(45);
    while acked.values().map(Vec::len).sum::<usize>() < GROUPS * PER_GROUP {
        assert!(
            Instant::now() < give_up,
            "acknowledged {} of {} after 45 s: {acked:?}\n{}",
            acked.values().map(Vec::len).sum::<usize>(),
            GROUPS * PER_GROUP,
            cluster.log_tails(30)
        );
        for message in receive(&consumer, TOPIC, &all_tags(), 32, Duration::from_secs(30)).await? {
            let (group, seq) = parse(&message);
            let so_far = acked.entry(group).or_default();
            assert_eq!(
                seq,
                so_far.len(),
                "group {group}: received message {seq} after {so_far:?} (attempt {})",
                message.delivery_attempt()
            );
            if first.iter().any(|m| m.message_id() == message.message_id()) {
                assert!(
                    message.delivery_attempt() >= 2,
                    "an expired FIFO message came back as attempt {}",
                    message.delivery_attempt()
                );
                redelivered += 1;
            }
            ack(&consumer, &message).await?;
            so_far.push(seq);
        }
    }
    assert_eq!(
        redelivered,
        first.len(),
        "every expired message came back once"
    );
    for (group, seqs) in &acked {
        assert_eq!(
            seqs,
            &(0..PER_GROUP).collect::<Vec<_>>(),
            "group {group} in send order"
        );
    }

    producer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("producer shutdown: {}", describe(&e)))?;
    consumer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("consumer shutdown: {}", describe(&e)))?;
    assert_no_client_panic(panics);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Failover: the same client objects keep working through a node's SIGKILL.

#[derive(Default)]
struct Tally {
    /// message id → body index of every send that succeeded.
    acked: Mutex<HashMap<String, usize>>,
    acked_after_kill: AtomicUsize,
    first_ack_after_kill: Mutex<Option<Instant>>,
    send_errors: Mutex<Vec<String>>,
    /// message id → (body index, times received).
    received: Mutex<HashMap<String, (usize, usize)>>,
    received_after_kill: AtomicUsize,
    /// Ids whose ack succeeded, and how often one of them was delivered again afterwards.
    ack_succeeded: Mutex<HashSet<String>>,
    back_after_ack: AtomicUsize,
    receive_errors: Mutex<Vec<String>>,
    ack_errors: Mutex<Vec<String>>,
    killed: AtomicBool,
}

impl Tally {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn missing(&self) -> Vec<(String, usize)> {
        let received = self.received.lock().unwrap();
        let mut missing: Vec<_> = self
            .acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| !received.contains_key(*id))
            .map(|(id, i)| (id.clone(), *i))
            .collect();
        missing.sort_by_key(|(_, i)| *i);
        missing
    }
}

fn short_list(errors: &Mutex<Vec<String>>) -> String {
    let errors = errors.lock().unwrap();
    let mut distinct: BTreeMap<&str, usize> = BTreeMap::new();
    for e in errors.iter() {
        *distinct.entry(e.as_str()).or_default() += 1;
    }
    distinct
        .iter()
        .take(8)
        .map(|(e, n)| format!("  {n} x {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

enum Victim {
    /// The leader, with every node in the client's access URL.
    Leader,
    /// The one node the client's access URL names, a follower.
    AccessFollower,
    /// The one node the client's access URL names, the leader.
    AccessLeader,
}

async fn produce_and_consume_through_a_kill(victim: Victim) -> anyhow::Result<()> {
    let panics = watch_panics();
    const TOPIC: &str = "rc-failover";
    const TOTAL: usize = 400;
    const KILL_AT: usize = 150;
    const INVISIBLE: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 4).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let (access, victim_id) = match victim {
        Victim::Leader => (cluster.endpoints().join(","), leader),
        Victim::AccessFollower => {
            let follower = (1..=3).find(|id| *id != leader).expect("a follower");
            (cluster.node(follower).client_addr.clone(), follower)
        }
        Victim::AccessLeader => (cluster.node(leader).client_addr.clone(), leader),
    };
    let producer = Arc::new(start_producer(&access, &[TOPIC]).await?);
    let consumer = Arc::new(start_consumer(&access, "rc-failover-g", &[TOPIC], POLL).await?);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Producer: one message after another; a failed send is retried as a new message (the
    // client gives every built message a new id), so its first try may also be stored.
    let producing = {
        let producer = producer.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            for index in 0..TOTAL {
                let give_up = Instant::now() + Duration::from_secs(30);
                loop {
                    let message = MessageBuilder::builder()
                        .set_topic(TOPIC)
                        .set_tag("Fail")
                        .set_keys(vec![format!("m{index}")])
                        .set_body(format!("m{index}").into_bytes())
                        .build()
                        .expect("valid message");
                    match tokio::time::timeout(Duration::from_secs(10), producer.send(message))
                        .await
                    {
                        Ok(Ok(receipt)) => {
                            tally
                                .acked
                                .lock()
                                .unwrap()
                                .insert(receipt.message_id().to_string(), index);
                            if tally.killed.load(Ordering::SeqCst)
                                && tally.acked_after_kill.fetch_add(1, Ordering::SeqCst) == 0
                            {
                                *tally.first_ack_after_kill.lock().unwrap() = Some(Instant::now());
                            }
                            break;
                        }
                        Ok(Err(e)) => tally.send_errors.lock().unwrap().push(describe(&e)),
                        Err(_) => tally
                            .send_errors
                            .lock()
                            .unwrap()
                            .push("send hung 10 s".into()),
                    }
                    if Instant::now() > give_up {
                        return Err(format!("message {index} not sent within 30 s"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
    };

    // Consumer: receive and acknowledge until told to stop.
    let consuming = {
        let consumer = consumer.clone();
        let tally = tally.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let received = tokio::time::timeout(
                    Duration::from_secs(20),
                    consumer.receive_with(TOPIC, &all_tags(), 32, INVISIBLE),
                )
                .await;
                let messages = match received {
                    Ok(Ok(messages)) => messages,
                    Ok(Err(e)) => {
                        tally.receive_errors.lock().unwrap().push(describe(&e));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(_) => {
                        tally
                            .receive_errors
                            .lock()
                            .unwrap()
                            .push("receive hung 20 s".into());
                        continue;
                    }
                };
                for message in messages {
                    let index: usize = String::from_utf8_lossy(message.body())
                        .trim_start_matches('m')
                        .parse()
                        .unwrap_or(usize::MAX);
                    {
                        let mut received = tally.received.lock().unwrap();
                        received
                            .entry(message.message_id().to_string())
                            .or_insert((index, 0))
                            .1 += 1;
                    }
                    if tally.killed.load(Ordering::SeqCst) {
                        tally.received_after_kill.fetch_add(1, Ordering::SeqCst);
                    }
                    if tally
                        .ack_succeeded
                        .lock()
                        .unwrap()
                        .contains(message.message_id())
                    {
                        tally.back_after_ack.fetch_add(1, Ordering::SeqCst);
                    }
                    match tokio::time::timeout(Duration::from_secs(10), consumer.ack(&message))
                        .await
                    {
                        Ok(Ok(())) => {
                            tally
                                .ack_succeeded
                                .lock()
                                .unwrap()
                                .insert(message.message_id().to_string());
                        }
                        Ok(Err(e)) => tally.ack_errors.lock().unwrap().push(describe(&e)),
                        Err(_) => tally
                            .ack_errors
                            .lock()
                            .unwrap()
                            .push("ack hung 10 s".into()),
                    }
                }
            }
        })
    };

    // Kill the victim in the middle of the run.
    let give_up = Instant::now() + Duration::from_secs(30);
    while tally.acked() < KILL_AT {
        assert!(
            Instant::now() < give_up,
            "only {} sends acknowledged before the kill; errors:\n{}\n{}",
            tally.acked(),
            short_list(&tally.send_errors),
            cluster.log_tails(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_node(victim_id);
    tally.killed.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(15)).await?;
    eprintln!("killed node {victim_id} (leader was {leader}); node {new_leader} leads");

    // Production finishes, every message acknowledged by the same producer object.
    let produced = tokio::time::timeout(Duration::from_secs(60), producing)
        .await
        .context("the producer did not finish within 60 s")?
        .context("the producer task")?;
    if let Err(e) = produced {
        panic!(
            "{e}; send errors:\n{}\n{}",
            short_list(&tally.send_errors),
            cluster.log_tails(30)
        );
    }
    let production_done = killed_at.elapsed();

    // Every acknowledged message reaches the same consumer object.
    let give_up = Instant::now() + Duration::from_secs(45);
    loop {
        let missing = tally.missing();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > give_up {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "{} of {} acknowledged messages never received, e.g. {:?}\nreceive errors:\n{}\nack errors:\n{}\n{}",
                missing.len(),
                tally.acked(),
                &missing[..missing.len().min(10)],
                short_list(&tally.receive_errors),
                short_list(&tally.ack_errors),
                cluster.log_tails(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumption_done = killed_at.elapsed();
    // Keep consuming a little longer than the invisible duration, so that messages whose ack
    // failed come back (and acknowledged ones would, if an ack had been lost).
    tokio::time::sleep(INVISIBLE + Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(30), consuming).await;

    let received = tally.received.lock().unwrap().clone();
    let redeliveries: usize = received.values().map(|(_, n)| n - 1).sum();
    let mut ids_per_body: HashMap<usize, usize> = HashMap::new();
    for (index, _) in received.values() {
        *ids_per_body.entry(*index).or_default() += 1;
    }
    let resent_duplicates = ids_per_body.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} acknowledged sends ({} after the kill, the first {:?} after it), {} failed send \
         attempts; production done {production_done:?} after the kill, consumption \
         {consumption_done:?}",
        tally.acked(),
        tally.acked_after_kill.load(Ordering::SeqCst),
        tally
            .first_ack_after_kill
            .lock()
            .unwrap()
            .map(|at| at.duration_since(killed_at)),
        tally.send_errors.lock().unwrap().len()
    );
    eprintln!(
        "received {} distinct ids ({} after the kill); duplicates: {redeliveries} redeliveries \
         of one id ({} of them after a successful ack), {resent_duplicates} bodies stored under \
         two ids by a retried send; \
         {} receive errors, {} ack errors",
        received.len(),
        tally.received_after_kill.load(Ordering::SeqCst),
        tally.back_after_ack.load(Ordering::SeqCst),
        tally.receive_errors.lock().unwrap().len(),
        tally.ack_errors.lock().unwrap().len()
    );
    eprintln!("send errors:\n{}", short_list(&tally.send_errors));
    eprintln!("receive errors:\n{}", short_list(&tally.receive_errors));
    eprintln!("ack errors:\n{}", short_list(&tally.ack_errors));

    assert_eq!(
        (0..TOTAL).collect::<HashSet<_>>(),
        tally
            .acked
            .lock()
            .unwrap()
            .values()
            .copied()
            .collect::<HashSet<_>>(),
        "every message index was acknowledged once"
    );
    assert!(
        tally.acked_after_kill.load(Ordering::SeqCst) > 0,
        "nothing was sent after the kill"
    );
    assert!(
        tally.received_after_kill.load(Ordering::SeqCst) > 0,
        "nothing was received after the kill"
    );

    // Shut down. NotifyClientTermination goes to the access URL: with the killed node among
    // its addresses the client may pick that one and fail, so the outcome is only reported.
    let producer =
        Arc::try_unwrap(producer).map_err(|_| anyhow::anyhow!("producer still shared"))?;
    let consumer =
        Arc::try_unwrap(consumer).map_err(|_| anyhow::anyhow!("consumer still shared"))?;
    eprintln!(
        "shutdown with node {victim_id} dead: producer {:?}, consumer {:?}",
        producer.shutdown().await.map_err(|e| describe(&e)),
        consumer.shutdown().await.map_err(|e| describe(&e))
    );
    assert_no_client_panic(panics);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_and_consumer_keep_working_when_the_leader_is_killed() -> anyhow::Result<()> {
    produce_and_consume_through_a_kill(Victim::Leader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_and_consumer_keep_working_when_their_access_node_is_killed() -> anyhow::Result<()>
{
    produce_and_consume_through_a_kill(Victim::AccessFollower).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_and_consumer_keep_working_when_their_access_node_the_leader_is_killed()
-> anyhow::Result<()> {
    produce_and_consume_through_a_kill(Victim::AccessLeader).await
}

// ---------------------------------------------------------------------------------------
// Delay and transactional messages.

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Receive and ack until `count` messages arrived or `deadline`; (body, arrival ms) each.
async fn drain(
    consumer: &SimpleConsumer,
    topic: &str,
    count: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<(String, i64, Option<i64>)>> {
    let mut arrived = Vec::new();
    while arrived.len() < count && Instant::now() < deadline {
        for message in receive(consumer, topic, &all_tags(), 32, Duration::from_secs(10)).await? {
            arrived.push((
                String::from_utf8_lossy(message.body()).into_owned(),
                now_ms(),
                message.delivery_timestamp(),
            ));
            ack(consumer, &message).await?;
        }
    }
    Ok(arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_messages_arrive_at_their_time() -> anyhow::Result<()> {
    let mark = watch_panics();
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("rs-delay", 4).await?;
    let access = cluster.nodes[0].client_addr.clone();
    let producer = start_producer(&access, &["rs-delay"]).await?;
    // Started first, so that its receive is already waiting when a message becomes due.
    let consumer = start_consumer(&access, "rs-delay-g", &["rs-delay"], POLL).await?;
    let at = [now_secs() + 2, now_secs() + 4];
    for (i, seconds) in at.iter().enumerate() {
        let message = MessageBuilder::delay_message_builder(
            "rs-delay",
            format!("d{i}").into_bytes(),
            *seconds,
        )
        .build()
        .map_err(|e| anyhow::anyhow!("build: {}", describe(&e)))?;
        producer
            .send(message)
            .await
            .map_err(|e| anyhow::anyhow!("send delay: {}", describe(&e)))?;
    }
    // Milliseconds passed as seconds: far beyond the broker's maximum delay.
    let absurd = MessageBuilder::delay_message_builder("rs-delay", b"x".to_vec(), now_ms() * 1000)
        .build()
        .map_err(|e| anyhow::anyhow!("build: {}", describe(&e)))?;
    assert!(
        producer.send(absurd).await.is_err(),
        "an absurd delay is refused"
    );

    let arrived = drain(
        &consumer,
        "rs-delay",
        2,
        Instant::now() + Duration::from_secs(30),
    )
    .await?;
    assert_eq!(2, arrived.len(), "{arrived:?}\n{}", cluster.log_tails(20));
    for (i, seconds) in at.iter().enumerate() {
        let (_, arrival, delivery) = arrived
            .iter()
            .find(|(body, _, _)| *body == format!("d{i}"))
            .context("delay message missing")?;
        let late = arrival - seconds * 1000;
        println!("d{i}: received {late} ms after its delivery time");
        assert!(late >= 0, "d{i} arrived {} ms early", -late);
        assert!(late <= 300, "d{i} arrived {late} ms late under light load");
        assert_eq!(
            Some(*seconds),
            *delivery,
            "the delivery timestamp is delivered"
        );
    }
    assert_no_client_panic(mark);
    Ok(())
}

/// Where topics are auto-created, a consumer may start before its topic exists. The client
/// never refreshes its route, so the route it got then (the default queue count) must still
/// serve once the producer's first send has created the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_started_before_its_topic_exists_receives_the_first_messages()
-> anyhow::Result<()> {
    let mark = watch_panics();
    let cluster = Cluster::start(ClusterOptions {
        auto_create_topics: true,
        ..Default::default()
    })
    .await?;
    let access = cluster.nodes[0].client_addr.clone();
    let consumer = start_consumer(&access, "rs-first-g", &["rs-first"], POLL).await?;
    let early = drain(&consumer, "rs-first", 1, Instant::now() + POLL).await?;
    assert!(early.is_empty(), "received {early:?} before any send");

    let producer = start_producer(&access, &["rs-first"]).await?;
    let bodies: HashSet<String> = (0..10).map(|i| format!("first-{i}")).collect();
    for body in &bodies {
        let message = MessageBuilder::builder()
            .set_topic("rs-first")
            .set_body(body.clone().into_bytes())
            .build()
            .map_err(|e| anyhow::anyhow!("build: {}", describe(&e)))?;
        producer
            .send(message)
            .await
            .map_err(|e| anyhow::anyhow!("send: {}", describe(&e)))?;
    }
    let arrived = drain(
        &consumer,
        "rs-first",
        bodies.len(),
        Instant::now() + Duration::from_secs(30),
    )
    .await?;
    let received: HashSet<String> = arrived.into_iter().map(|(body, _, _)| body).collect();
    assert_eq!(bodies, received);
    assert_no_client_panic(mark);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_commit_roll_back_and_resolve_by_check_back() -> anyhow::Result<()> {
    use rocketmq::model::transaction::{Transaction, TransactionResolution};
    let mark = watch_panics();
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("rs-tx", 4).await?;
    let access = cluster.nodes[0].client_addr.clone();
    let mut option = ProducerOption::default();
    option.set_topics(vec!["rs-tx"]);
    let checker = Box::new(|_id: String, message: MessageView| {
        if message.body() == b"check-commit" {
            TransactionResolution::COMMIT
        } else {
            TransactionResolution::ROLLBACK
        }
    });
    let mut producer =
        Producer::new_transaction_producer(option, client_option(&access, POLL), checker)
            .map_err(|e| anyhow::anyhow!("new_transaction_producer: {}", describe(&e)))?;
    producer
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("start: {}", describe(&e)))?;
    let sent_ms = now_ms();
    let mut pending = Vec::new();
    for body in ["commit", "rollback", "check-commit", "check-rollback"] {
        let message =
            MessageBuilder::transaction_message_builder("rs-tx", body.as_bytes().to_vec())
                .build()
                .map_err(|e| anyhow::anyhow!("build: {}", describe(&e)))?;
        let transaction = producer
            .send_transaction_message(message)
            .await
            .map_err(|e| anyhow::anyhow!("send half: {}", describe(&e)))?;
        match body {
            "commit" => transaction
                .commit()
                .await
                .map_err(|e| anyhow::anyhow!("commit: {}", describe(&e)))?,
            "rollback" => transaction
                .rollback()
                .await
                .map_err(|e| anyhow::anyhow!("rollback: {}", describe(&e)))?,
            // Left unresolved: the broker asks the producer's checker.
            _ => pending.push(transaction),
        }
    }
    let consumer = start_consumer(&access, "rs-tx-g", &["rs-tx"], POLL).await?;
    let mut arrived = drain(
        &consumer,
        "rs-tx",
        2,
        Instant::now() + Duration::from_secs(25),
    )
    .await?;
    // Both unresolved halves are checked back together: a rolled-back one delivered by
    // mistake would come along with check-commit. One more long poll looks for it.
    arrived.extend(drain(&consumer, "rs-tx", 1, Instant::now() + POLL).await?);
    let bodies: HashSet<&str> = arrived.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(
        HashSet::from(["commit", "check-commit"]),
        bodies,
        "only committed messages are delivered\n{}",
        cluster.log_tails(20)
    );
    if let Some((_, arrival, _)) = arrived.iter().find(|(b, _, _)| b == "check-commit") {
        println!(
            "check-commit delivered {} ms after its send (first check-back after 6 s)",
            arrival - sent_ms
        );
    }
    drop(pending);
    assert_no_client_panic(mark);
    Ok(())
}

/// The leader cut off from the other two nodes (each node in its own network namespace; the
/// client still reaches all three) while the producer sends one message at a time. The Rust
/// client spreads its calls over every node of the route and never retries a failed send. The
/// cut-off node closes its client connections and refuses new ones once it counts itself cut
/// off, and the client's channel then leaves that node out: from 3 s into the cut every send
/// succeeds at once. Measured with `cut_off_after_ms = 0`: 4 sends in those 7 s, 3 of them
/// failed after the 2.5 s propose deadline each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_leave_a_node_cut_off_from_its_group() -> anyhow::Result<()> {
    const CUT_AT: Duration = Duration::from_secs(4);
    const HEAL_AT: Duration = Duration::from_secs(14);
    /// Time for the node to count itself cut off (1 s without contact, by default).
    const SETTLE: Duration = Duration::from_secs(3);
    let panics = watch_panics();
    let topic = "rust-cut-off";
    let cluster = Cluster::start(ClusterOptions {
        netns: true,
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic(topic, 6).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let access = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .context("a follower")?
        .client_addr
        .clone();
    let producer = start_producer(&access, &[topic]).await?;
    let network = cluster.network.as_ref().context("netns cluster")?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let started = Instant::now();
    let (mut cut, mut healed) = (false, false);
    let mut during_cut = 0;
    let mut seq = 0;
    while started.elapsed() < HEAL_AT + Duration::from_secs(4) {
        if !cut && started.elapsed() >= CUT_AT {
            network.partition(&[leader], &others)?;
            cut = true;
        }
        if !healed && started.elapsed() >= HEAL_AT {
            network.heal()?;
            healed = true;
        }
        seq += 1;
        let sent = Sent {
            tag: None,
            keys: Vec::new(),
            properties: HashMap::new(),
            body: format!("cut {seq}").into_bytes(),
        };
        let at = started.elapsed();
        let outcome = send_normal(&producer, topic, &sent).await;
        let took = started.elapsed() - at;
        if at >= CUT_AT + SETTLE && at < HEAL_AT {
            during_cut += 1;
            assert!(
                outcome.is_ok() && took < Duration::from_millis(1500),
                "a send {at:?} into the run, with node {leader} cut off since {CUT_AT:?}, took \
                 {took:?}: {outcome:?}\n{}",
                cluster.log_tails(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{during_cut} sends while node {leader} was cut off, each done within 1.5 s");
    assert!(
        during_cut > 50,
        "only {during_cut} sends while the node was cut off"
    );
    assert_no_client_panic(panics);
    Ok(())
}
