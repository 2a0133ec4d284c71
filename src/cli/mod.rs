//! The client-side subcommands of `raftmq`.

pub mod admin;
pub mod bench;
pub mod bench_connection;
pub mod bench_load;
pub mod consume;
pub mod local;
pub mod produce;

use crate::client::Client;

/// Where the CLI finds the group: `--endpoints`, or the local cluster's default ports.
#[derive(Debug, Clone, clap::Args)]
pub struct EndpointArgs {
    /// Client addresses of the group's nodes, comma-separated.
    #[arg(
        long,
        global = true,
        env = "RAFTMQ_ENDPOINTS",
        default_value = "127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083"
    )]
    pub endpoints: String,
}

impl EndpointArgs {
    pub fn list(&self) -> Vec<String> {
        self.endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.list())?)
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
