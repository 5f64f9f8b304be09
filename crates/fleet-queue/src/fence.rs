//! The fence before an effect that must happen at most once, such as a provider send.
//!
//! Why: leases alone cannot stop a second effect. A worker frozen (SIGSTOP, a stalled VM) between
//! its check and its effect, or between the effect and its record, loses its lease; the scheduler
//! hands the job to another worker, which finds no record and would act again, while the first
//! one, on waking, completes its own effect or writes its record. The fence closes that gap: right
//! before the effect, one script confirms that this consumer still holds the entry (a reclaimed
//! holder stops there) and leaves a mark, `<consumer>/<entry id>|<time>`, on the job. A later
//! delivery that finds another delivery's mark younger than the in-doubt wait knows an attempt may
//! be under way whose outcome is not recorded yet, and waits for that record instead of acting.
//! The mark names the delivery, not the consumer: a process frozen past its lease wakes with its
//! first attempt still in flight and can read the job's reclaimed copy under the same consumer
//! name (chaos seed 270945 sent 39 replies twice that way); the copy waits like any other. Recording an
//! outcome clears the mark ([`Queue::clear_fences`]); a mark older than the wait is taken over (its
//! holder is taken for dead: the one window where a second effect remains possible is a process
//! killed between its effect and its record).

use std::time::Duration;

use fred::{cmd, prelude::*, types::Value};

use crate::{Delivery, Queue, Result, Settler};

/// What [`Settler::fence`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// The entry is still this consumer's and the job is marked: the effect may go ahead.
    Go,
    /// The entry was reclaimed: another worker has the job now; this holder must not act.
    Lost,
    /// Another delivery (another holder's, or an earlier one of this consumer's) marked the job
    /// `age` ago and its outcome is not recorded: wait for it.
    InDoubt {
        /// The mark's age.
        age: Duration,
    },
}

impl Settler {
    /// Fences `d`'s effect (see the module docs). `in_doubt_wait` is how long another holder's
    /// mark keeps this one from acting; the mark itself lives twice that, so a crashed holder's
    /// mark expires even if nobody takes it over.
    pub async fn fence(&self, d: &Delivery, in_doubt_wait: Duration) -> Result<Fence> {
        let wait_ms = in_doubt_wait.as_millis().clamp(1, i64::MAX as u128 / 2) as i64;
        let keys = vec![
            self.queue.keys.stream(d.priority).to_owned(),
            self.queue.keys.fence(d.job_id.as_str()),
        ];
        let args: Vec<Value> = vec![
            Value::from(&*self.group),
            d.stream_id.as_str().into(),
            Value::from(self.leases.consumer()),
            (wait_ms * 2).into(),
            wait_ms.into(),
        ];
        let reply = self
            .queue
            .broker
            .eval(&self.queue.broker.scripts.fence, keys, args)
            .await?;
        let Value::Array(parts) = reply else {
            return Err(crate::Error::protocol("fence.lua answered no array"));
        };
        let fence = match parts.first().and_then(Value::as_i64) {
            Some(1) => Fence::Go,
            Some(0) => Fence::Lost,
            Some(2) => Fence::InDoubt {
                age: Duration::from_millis(parts.get(2).and_then(Value::as_u64).unwrap_or(0)),
            },
            _ => {
                return Err(crate::Error::protocol(
                    "fence.lua answered an unknown state",
                ));
            }
        };
        self.leases.fenced(d.priority, &d.stream_id, &fence);
        Ok(fence)
    }
}

/// Most fences one `UNLINK` clears.
const CLEAR_CHUNK: usize = 500;

impl Queue {
    /// Clears the fences of jobs whose outcome is now recorded. One command per 500 jobs.
    pub async fn clear_fences(&self, job_ids: &[&str]) -> Result<()> {
        for chunk in job_ids.chunks(CLEAR_CHUNK) {
            let keys: Vec<Value> = chunk
                .iter()
                .map(|id| Value::from(self.keys.fence(id)))
                .collect();
            let _: Value = self
                .broker
                .client()
                .custom(
                    cmd!("UNLINK", hash: fred::types::ClusterHash::FirstKey),
                    keys,
                )
                .await?;
        }
        Ok(())
    }
}
