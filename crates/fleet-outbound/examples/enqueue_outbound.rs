//! Fills the `outbound` queue with text replies for a benchmark of `fleet-outbound`.
//!
//! `cargo run --release -p fleet-outbound --example enqueue_outbound -- --count 100000 --prefix bench`

use clap::Parser;
use fleet_core::{EnqueueOptions, OUTBOUND_QUEUE, OutboundBody, OutboundMessage, Provider};

/// Enqueues `count` replies from one tenant to `recipients` distinct numbers.
#[derive(Parser, Debug)]
struct Args {
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key prefix (use a fresh one per run).
    #[arg(long, env = "FLEET_KEY_PREFIX", default_value = "bench")]
    prefix: String,
    /// Replies to enqueue.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Tenant id.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Provider: meta or twilio.
    #[arg(long, default_value = "meta")]
    provider: Provider,
    /// Distinct recipients (messages are spread over them round-robin).
    #[arg(long, default_value_t = 100_000)]
    recipients: usize,
    /// Replies per enqueue round trip.
    #[arg(long, default_value_t = 1_000)]
    chunk: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = fleet_queue::Broker::connect(&args.redis_url, &args.prefix).await?;
    let queue = broker.queue(OUTBOUND_QUEUE);
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < args.count {
        let n = args.chunk.min(args.count - done);
        let batch: Vec<(OutboundMessage, EnqueueOptions)> = (done..done + n)
            .map(|i| {
                let m = OutboundMessage {
                    tenant: args.tenant.clone(),
                    provider: args.provider,
                    to: format!("1555{:07}", i % args.recipients.max(1)),
                    body: OutboundBody::Text {
                        text: format!("benchmark message {i}"),
                    },
                    origin: "bench".into(),
                    created_at_ms: 0,
                    sent: None,
                };
                (m, EnqueueOptions::default())
            })
            .collect();
        queue.enqueue_batch(&batch).await?;
        done += n;
    }
    eprintln!(
        "enqueued {done} replies in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
