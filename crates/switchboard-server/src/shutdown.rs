//! A cloneable shutdown signal reaching every long-lived connection.

use tokio_util::sync::CancellationToken;

/// Triggered once; every WebSocket, SSE stream and long-poll waits on it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// Starts the shutdown.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves when the shutdown starts.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }
}
