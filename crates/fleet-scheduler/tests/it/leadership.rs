//! Leadership: one holder at a time, fencing tokens that grow from term to term, takeover after
//! the holder stops, a leader that loses its lock stopping its tasks, and a scheduler that
//! refuses a lease not longer than the job timeout.

use std::time::Duration;

use fleet_core::EnqueueOptions;
use fleet_runtime::Shutdown;
use fleet_scheduler::{Role, Scheduler, SchedulerConfig};
use fred::{
    prelude::*,
    types::{Expiration, SetOptions, Value},
};
use tokio::sync::watch;

use crate::support::{TestEnv, eventually, raw_client};

/// Generous bound for anything that takes a few short TTLs; expected well within.
const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn one_holder_at_a_time_and_another_takes_over_after_expiry() {
    let env = TestEnv::new().await;
    let a = env.lock(Duration::from_millis(200)).await;
    let b = env.lock(Duration::from_millis(200)).await;

    let fa = a
        .try_acquire()
        .await
        .unwrap()
        .expect("a free lock is taken");
    assert_eq!(b.try_acquire().await.unwrap(), None, "held by a");
    assert_eq!(
        a.try_acquire().await.unwrap(),
        Some(fa),
        "a's own lock: same term"
    );
    assert!(a.renew().await.unwrap());
    assert!(!b.renew().await.unwrap(), "b cannot extend a's lock");
    assert!(!b.release().await.unwrap(), "nor release it");
    assert_eq!(a.holder().await.unwrap().as_deref(), Some(a.token()));

    // a stops renewing (it died): b campaigns until the lock expires.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let fb = loop {
        if let Some(f) = b.try_acquire().await.unwrap() {
            break f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b did not take over within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        fb > fa,
        "fencing tokens grow from term to term ({fa} then {fb})"
    );
    assert!(
        !a.renew().await.unwrap(),
        "a, back from the dead, has lost the lead"
    );
    assert!(!a.release().await.unwrap(), "and cannot release b's lock");
    assert_eq!(a.try_acquire().await.unwrap(), None);
    assert_eq!(a.holder().await.unwrap().as_deref(), Some(b.token()));
}

#[tokio::test]
async fn a_released_lock_is_taken_at_once_with_a_new_fencing_token() {
    let env = TestEnv::new().await;
    let a = env.lock(Duration::from_secs(30)).await;
    let b = env.lock(Duration::from_secs(30)).await;
    let fa = a.try_acquire().await.unwrap().unwrap();
    assert!(a.release().await.unwrap());
    let fb = b
        .try_acquire()
        .await
        .unwrap()
        .expect("released: no wait for the TTL");
    assert_eq!(fb, fa + 1);
}

fn fast_config() -> SchedulerConfig {
    let mut c = SchedulerConfig::default();
    c.leader.ttl = Duration::from_millis(300);
    c.delayed.interval = Duration::from_millis(20);
    c
}

async fn spawn_replica(
    env: &TestEnv,
    config: SchedulerConfig,
) -> (watch::Receiver<Role>, Shutdown, tokio::task::JoinHandle<()>) {
    let lock = env.lock(config.leader.ttl).await;
    let s = Scheduler::new(config, &env.broker, lock).unwrap();
    let role = s.subscribe();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(s.run(shutdown.clone()));
    (role, shutdown, task)
}

async fn wait_role(rx: &mut watch::Receiver<Role>, want: impl Fn(&Role) -> bool) -> Role {
    *tokio::time::timeout(LIMIT, rx.wait_for(|r| want(r)))
        .await
        .expect("role change within the limit")
        .unwrap()
}

/// Enqueues one entry due almost at once and waits until some leader promotes it.
async fn promoted_by_a_leader(env: &TestEnv) {
    let q = env.queue("inbound");
    let before = q.backlog().await.unwrap();
    q.enqueue(
        &1u8,
        &EnqueueOptions {
            delay: Some(Duration::from_millis(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("the leader promotes the due entry", LIMIT, || {
        let q = q.clone();
        async move { q.backlog().await.unwrap() == before + 1 }
    })
    .await;
}

#[tokio::test]
async fn replicas_elect_one_leader_and_the_other_takes_over_when_it_stops() {
    let env = TestEnv::new().await;
    let mut replicas = vec![
        spawn_replica(&env, fast_config()).await,
        spawn_replica(&env, fast_config()).await,
    ];

    // Whichever wins, exactly one leads.
    let (mut r0, mut r1) = (replicas[0].0.clone(), replicas[1].0.clone());
    let first = tokio::time::timeout(LIMIT, async {
        tokio::select! {
            r = r0.wait_for(Role::is_leader) => { r.unwrap(); 0 }
            r = r1.wait_for(Role::is_leader) => { r.unwrap(); 1 }
        }
    })
    .await
    .expect("a leader within the limit");
    let (leader_rx, leader_stop, leader_task) = replicas.remove(first);
    let (mut follower_rx, follower_stop, follower_task) = replicas.remove(0);
    let Role::Leader { fencing_token: f1 } = *leader_rx.borrow() else {
        unreachable!()
    };
    assert!(!follower_rx.borrow().is_leader(), "never two leaders");
    promoted_by_a_leader(&env).await;

    // The leader stops (gracefully: it releases the lock); the other takes over.
    leader_stop.cancel();
    tokio::time::timeout(LIMIT, leader_task)
        .await
        .expect("a stopped replica returns")
        .unwrap();
    let Role::Leader { fencing_token: f2 } = wait_role(&mut follower_rx, Role::is_leader).await
    else {
        unreachable!()
    };
    assert!(f2 > f1);
    promoted_by_a_leader(&env).await;

    follower_stop.cancel();
    follower_task.await.unwrap();
}

#[tokio::test]
async fn when_the_leader_crashes_another_takes_over_after_the_ttl() {
    let env = TestEnv::new().await;
    let (mut ra, stop_a, task_a) = spawn_replica(&env, fast_config()).await;
    let Role::Leader { fencing_token: f1 } = wait_role(&mut ra, Role::is_leader).await else {
        unreachable!()
    };
    let (mut rb, stop_b, task_b) = spawn_replica(&env, fast_config()).await;
    assert!(!rb.borrow().is_leader());

    // The leader dies without a word: its task is dropped mid-flight, the lock is not released.
    let crashed_at = tokio::time::Instant::now();
    task_a.abort();
    let _ = task_a.await;
    let Role::Leader { fencing_token: f2 } = wait_role(&mut rb, Role::is_leader).await else {
        unreachable!()
    };
    assert!(f2 > f1);
    // Within the TTL (300 ms) plus one campaign interval; the bound is loose for a loaded machine.
    let took = crashed_at.elapsed();
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    promoted_by_a_leader(&env).await;

    stop_a.cancel();
    stop_b.cancel();
    task_b.await.unwrap();
}

#[tokio::test]
async fn a_leader_that_loses_its_lock_stops_its_tasks_at_once_and_campaigns_again() {
    let env = TestEnv::new().await;
    let (mut role, stop, task) = spawn_replica(&env, fast_config()).await;
    let Role::Leader { fencing_token: f1 } = wait_role(&mut role, Role::is_leader).await else {
        unreachable!()
    };
    promoted_by_a_leader(&env).await;

    // The lock expires behind the leader's back (as after a long pause) and a rival takes it,
    // with a TTL long enough that the rival's term outlasts what follows.
    // Done in one command (the rival's token replacing the leader's), so the leader cannot win
    // the lock back in between; then the counter moves as an acquisition moves it.
    let rival = env.lock(Duration::from_secs(30)).await;
    let raw = raw_client().await;
    let [lock_key, fence_key] = rival.keys().map(str::to_owned);
    let _: Value = raw
        .set(
            &lock_key,
            rival.token(),
            Some(Expiration::PX(30_000)),
            Some(SetOptions::XX),
            false,
        )
        .await
        .unwrap();
    let _: i64 = raw.incr(&fence_key).await.unwrap();
    let f_rival = rival
        .try_acquire()
        .await
        .unwrap()
        .expect("the rival holds the lock");
    assert!(f_rival > f1);
    wait_role(&mut role, |r| !r.is_leader()).await;

    // Its tasks have stopped: a due entry stays in the delayed set. (An absence can only be
    // observed over a window: 15 promotion intervals.)
    let q = env.queue("inbound");
    let before = q.backlog().await.unwrap();
    q.enqueue(
        &2u8,
        &EnqueueOptions {
            delay: Some(Duration::from_millis(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        q.backlog().await.unwrap(),
        before,
        "a follower promotes nothing"
    );
    assert!(!role.borrow().is_leader());

    // The rival stops; the replica wins the next campaign, in a later term, and works again.
    assert!(rival.release().await.unwrap());
    let Role::Leader { fencing_token: f3 } = wait_role(&mut role, Role::is_leader).await else {
        unreachable!()
    };
    assert!(f3 > f_rival);
    eventually("the new term promotes the waiting entry", LIMIT, || {
        let q = q.clone();
        async move { q.backlog().await.unwrap() == before + 1 }
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let _ = raw.quit().await;
}

#[tokio::test]
async fn run_refuses_a_lease_not_longer_than_the_job_timeout() {
    let env = TestEnv::new().await;
    let config = SchedulerConfig {
        max_job_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let lock = env.lock(config.leader.ttl).await;
    let err = fleet_scheduler::run(config, env.broker.clone(), lock, Shutdown::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "[scheduler] the stalled lease of queue inbound (30s) must be longer than \
         max_job_timeout (30s), or jobs still running would be reclaimed and run twice"
    );
}
