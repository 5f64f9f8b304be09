//! Fills a key prefix for the fleetctl benchmark (docs/PERFORMANCE.md): N stream entries on
//! `inbound` spread over the priorities (pipelined `enqueue_batch`), and D dead letters made by a
//! consumer, so `fleetctl queues` and `fleetctl dlq list` can be timed against a large queue.
//!
//! Usage: `bench_fill <prefix> [entries] [dead]`; `bench_fill --clean <prefix>` deletes the keys.

use std::time::{Duration, Instant};

use fleet_core::{EnqueueOptions, INBOUND_QUEUE, Priority};
use fleet_queue::{Broker, ConsumerOptions, PriorityMode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if args.first().map(String::as_str) == Some("--clean") {
        let prefix = args.get(1).expect("prefix");
        let broker = Broker::connect(&url, prefix).await?;
        for q in fleet_core::QUEUES {
            let n = broker.queue(q).destroy().await?;
            println!("deleted {n} keys of {q}");
        }
        return Ok(());
    }
    let prefix = args
        .first()
        .expect("usage: bench_fill <prefix> [entries] [dead]");
    let entries: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let dead: usize = args.get(2).map_or(Ok(100_000), |s| s.parse())?;
    let broker = Broker::connect(&url, prefix).await?;
    let q = broker.queue(INBOUND_QUEUE);
    let payload = fleetctl_bench_payload();
    let started = Instant::now();
    // The dead letters first: enqueue, take, dead-letter with a few reasons.
    let mut o = ConsumerOptions::new("bench");
    o.batch_size = 1000;
    o.linger = Duration::ZERO;
    o.block = Duration::from_millis(100);
    o.mode = PriorityMode::Strict;
    let mut c = q.consumer(o).await?;
    let reasons = ["max_attempts", "decode", "http_4xx", "stalled"];
    let mut made = 0;
    while made < dead {
        let n = 1000.min(dead - made);
        let batch: Vec<_> = (0..n)
            .map(|_| (payload.clone(), EnqueueOptions::default()))
            .collect();
        q.enqueue_batch(&batch).await?;
        let got = c.next_batch().await?;
        let futs = got.iter().enumerate().map(|(i, d)| {
            let c = &c;
            async move {
                c.dead_letter(d, reasons[i % reasons.len()], "bench error")
                    .await
            }
        });
        for r in futures::future::join_all(futs).await {
            r?;
        }
        made += got.len();
    }
    println!("{made} dead letters in {:?}", started.elapsed());
    let started = Instant::now();
    let mut done = 0;
    while done < entries {
        let n = 10_000.min(entries - done);
        let batch: Vec<_> = (0..n)
            .map(|i| {
                let p = Priority::ALL[(done + i) % 3];
                (payload.clone(), EnqueueOptions::with_priority(p))
            })
            .collect();
        q.enqueue_batch(&batch).await?;
        done += n;
    }
    println!("{done} entries in {:?}", started.elapsed());
    Ok(())
}

fn fleetctl_bench_payload() -> fleet_core::InboundEvent {
    use fleet_core::{InboundBody, InboundEvent, InboundMessage, Provider};
    InboundEvent {
        tenant: "bench".into(),
        provider: Provider::Meta,
        received_at_ms: 1,
        body: InboundBody::Message(InboundMessage {
            contact: "15551234567".into(),
            provider_message_id: "wamid.bench".into(),
            business_number: "1234567890".into(),
            kind: "text".into(),
            text: Some("a typical short customer message of some sixty characters".into()),
            timestamp: 1_700_000_000,
            ..Default::default()
        }),
    }
}
