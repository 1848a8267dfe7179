//! Dispatch: from creating a session to the environment's waiting long-poll returning
//! its work.
//!
//! Each sample starts a poll, waits until the server counts it as waiting
//! (`switchboard_long_polls_waiting` on `/metrics`), creates a session on the
//! environment, and times until the poll answers with the work item. The work is then
//! acknowledged, as a bridge does, so it is never handed out again.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::message::now_ns;
use crate::stats::{Latencies, Summary};
use crate::system::Switchboard;

/// At most this many samples are taken before timing starts.
const WARMUP: usize = 10;

/// Dispatch figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DispatchResult {
    /// From sending the create request to the poll's answer.
    pub(crate) latency: Summary,
    /// The create request alone, for comparison.
    pub(crate) create: Summary,
    /// Wall time of the timed part, seconds.
    pub(crate) secs: f64,
}

/// Takes `samples` timed dispatches (fewer if `max` runs out first).
pub(crate) async fn run(
    server: &Switchboard,
    samples: usize,
    max: Duration,
) -> anyhow::Result<DispatchResult> {
    let env = std::sync::Arc::new(server.register_environment().await?);
    let mut latency = Latencies::default();
    let mut create = Latencies::default();
    // A tenth of the samples, at most WARMUP, go before timing starts.
    let warmup = (samples / 10).min(WARMUP);
    let mut started = Instant::now();
    let mut deadline = started + max;
    for i in 0..warmup + samples {
        if i == warmup {
            started = Instant::now();
            deadline = started + max;
        }
        if Instant::now() > deadline {
            break;
        }
        let poll = {
            let (server, env) = (server.clone(), env.clone());
            tokio::spawn(async move {
                let work = server.poll(&env).await;
                (work, now_ns())
            })
        };
        wait_until_polling(server).await;

        let sent = now_ns();
        server.create_session(&env).await?;
        let created = now_ns();
        let (work, answered) = poll.await.context("the poll task failed")?;
        let work = work?.context("the poll ended without work")?;
        if i >= warmup {
            latency.record(answered.saturating_sub(sent));
            create.record(created - sent);
        }
        server.ack(&env, &work).await?;
    }
    Ok(DispatchResult {
        latency: latency.summary(),
        create: create.summary(),
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Waits until the server reports a waiting poll, then a little more so the poll has
/// certainly gone to sleep on its wake-up. A server without the metric gets a fixed wait.
async fn wait_until_polling(server: &Switchboard) {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match server
            .poll_node_metric("switchboard_long_polls_waiting")
            .await
        {
            Ok(n) if n >= 1.0 => break,
            Ok(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}
