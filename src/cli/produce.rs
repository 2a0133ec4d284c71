//! `raftmq produce`: send messages by hand.

use std::io::BufRead;

use anyhow::Context;

use super::EndpointArgs;
use crate::client::message;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Topic to send to.
    #[arg(long)]
    pub topic: String,
    /// Message tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Message key (repeatable).
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Body of each message; `{i}` is replaced by the message's number.
    #[arg(long, default_value = "hello from raftmq #{i}")]
    pub body: String,
    /// How many messages to send.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Send each line of standard input as one message instead.
    #[arg(long)]
    pub stdin: bool,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let client = args.endpoints.client()?;
    let bodies: Box<dyn Iterator<Item = String>> = if args.stdin {
        Box::new(
            std::io::stdin()
                .lock()
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
                .into_iter(),
        )
    } else {
        let template = args.body.clone();
        Box::new((0..args.count).map(move |i| template.replace("{i}", &i.to_string())))
    };
    let mut sent = 0u64;
    for body in bodies {
        let msg = message(
            &args.topic,
            body.into_bytes(),
            args.tag.as_deref(),
            &args.keys,
        );
        let entries = client
            .send(vec![msg])
            .await
            .with_context(|| format!("send message #{sent} to topic `{}`", args.topic))?;
        for entry in entries {
            println!(
                "sent {} to {} at queue offset {}",
                entry.message_id, args.topic, entry.offset
            );
        }
        sent += 1;
    }
    eprintln!("{sent} message(s) acknowledged");
    Ok(())
}
