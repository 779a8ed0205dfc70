//! Process plumbing both binaries share: logging and stop signals.

/// Logs to stderr, filtered by `SWITCHBOARD_LOG` (tracing's `EnvFilter` syntax;
/// default `info`, with hickory's per-query logs off).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "info,hickory_server=warn,hickory_resolver=warn,hickory_net=warn,hickory_proto=warn",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Returns on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
