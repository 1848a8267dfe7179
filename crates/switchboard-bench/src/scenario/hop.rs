//! Hop latency: one message at a time through one session, a prompt from the viewer to
//! the worker and an assistant message from the worker to the viewer, alternating.
//!
//! Each hop is timed from just before the sender hands the message to its socket (or
//! its POST: prompts too with `--prompts post`) to the moment the receiver has the whole
//! frame; the next message goes only
//! after both the receiver has it and the sender's write returned, so the system is
//! never measured with more than one message in flight.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::message::{now_ns, Payloads, INBOUND_MARK, OUTBOUND_MARK};
use crate::stats::{Latencies, Summary};
use crate::system::{next_stamped, System};

/// At most this many round trips run before timing starts, to warm connections, caches
/// and the allocator.
const WARMUP: usize = 50;

/// Hop latencies through one system.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HopResult {
    /// Prompt from the viewer until the worker has it.
    pub(crate) viewer_to_worker: Summary,
    /// Assistant message from the worker until the viewer has it.
    pub(crate) worker_to_viewer: Summary,
    /// Wall time of the timed part, seconds.
    pub(crate) secs: f64,
}

/// Runs `samples` timed round trips (fewer if `max` runs out first).
pub(crate) async fn run(
    system: &System,
    payloads: &Payloads,
    samples: usize,
    max: Duration,
) -> anyhow::Result<HopResult> {
    let env = system.environment().await?;
    let session = system.open_session(env.as_ref()).await?;
    let mut worker = system.connect_worker(&session).await?;
    let mut viewer = system.connect_viewer(&session).await?;

    let mut inbound = Latencies::default();
    let mut outbound = Latencies::default();
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
        let timed = i >= warmup;

        let sent = now_ns();
        // A prompt by POST may reach the worker before its answer comes back; the
        // worker reads meanwhile.
        let (written, arrived) = tokio::join!(
            viewer.send(payloads.prompt(sent)),
            next_stamped(&mut worker.reader, INBOUND_MARK, sent)
        );
        written.context("the viewer's prompt failed")?;
        let arrived = arrived.context("the worker did not get the prompt")?;
        if timed {
            inbound.record(arrived - sent);
        }
        if system.echoes_prompts() {
            // The viewer sees its own prompt in the log; take it off the socket untimed.
            next_stamped(&mut viewer, INBOUND_MARK, sent)
                .await
                .context("the viewer did not see its prompt")?;
        }

        let sent = now_ns();
        let message = [payloads.assistant(sent)];
        let (written, arrived) = tokio::join!(
            worker.writer.send(&message),
            next_stamped(&mut viewer, OUTBOUND_MARK, sent)
        );
        written.context("the worker's write failed")?;
        let arrived = arrived.context("the viewer did not get the worker's message")?;
        if timed {
            outbound.record(arrived - sent);
        }
    }
    Ok(HopResult {
        viewer_to_worker: inbound.summary(),
        worker_to_viewer: outbound.summary(),
        secs: started.elapsed().as_secs_f64(),
    })
}
