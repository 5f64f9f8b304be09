//! The "already sent" check, one Postgres query for many jobs: every handler asks before it
//! sends, and the questions of concurrent handlers share one lookup.
//!
//! Why always, and why batched: a job can have been sent by an earlier delivery whatever its
//! attempt count says (a dead-letter replay resets attempts; a stalled recovery after a crash
//! between the record and the acknowledgement counts one), so skipping the check for first
//! deliveries sent replies twice. One query per job would halve throughput (docs/PERFORMANCE.md);
//! the handlers of one read batch start together, so their questions queue up while one lookup is
//! in flight and the next takes them all, as the ingest group commit does. No timer: an idle
//! worker adds no latency.
//!
//! Bounded: [`CHANNEL_CAPACITY`] questions wait at most (more make their handlers wait), one
//! lookup asks about at most [`MAX_LOOKUP`] jobs, [`LOOKERS`] lookups run at once.

use std::sync::Arc;

use fleet_store::{SentRecord, Store};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Questions waiting for a lookup.
pub(crate) const CHANNEL_CAPACITY: usize = 4096;
/// Most jobs one lookup asks about.
pub(crate) const MAX_LOOKUP: usize = 1000;
/// Lookups in flight at once.
pub(crate) const LOOKERS: usize = 2;

/// The answer to one question: the sent record, if the job was sent; `Err` when Postgres could
/// not be asked (the job must then wait, never be sent blind).
pub(crate) type Answer = Result<Option<SentRecord>, String>;

struct Question {
    job_id: String,
    reply: oneshot::Sender<Answer>,
}

/// Asks the store whether jobs were sent; cheap to clone. The lookups stop once every clone is
/// dropped.
#[derive(Clone)]
pub(crate) struct SentLedger {
    tx: mpsc::Sender<Question>,
}

impl SentLedger {
    /// Starts the lookup tasks on `store`; needs a tokio runtime.
    pub(crate) fn start(store: &Store) -> SentLedger {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..LOOKERS {
            tokio::spawn(lookup_loop(store.clone(), rx.clone()));
        }
        SentLedger { tx }
    }

    /// Whether `job_id` was sent, with its record.
    pub(crate) async fn sent(&self, job_id: &str) -> Answer {
        let (reply, answer) = oneshot::channel();
        let closed = || "the sent-record lookups stopped".to_owned();
        self.tx
            .send(Question {
                job_id: job_id.to_owned(),
                reply,
            })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn lookup_loop(store: Store, rx: Arc<Mutex<mpsc::Receiver<Question>>>) {
    loop {
        // One question (waiting for it), then whatever else is already queued.
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_LOOKUP {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            batch
        };
        metrics::histogram!("fleet_outbound_sent_lookup_jobs").record(batch.len() as f64);
        let ids: Vec<&str> = batch.iter().map(|q| q.job_id.as_str()).collect();
        match store.outbound_sent_many(&ids).await {
            Ok(mut sent) => {
                for q in batch {
                    let record = sent.remove(&q.job_id);
                    let _ = q.reply.send(Ok(record));
                }
            }
            Err(e) => {
                let error = e.to_string();
                for q in batch {
                    let _ = q.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
