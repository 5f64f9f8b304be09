//! The start-up check of the Redis server against a real `redis-server` of the test's own, under
//! every `maxmemory-policy` Redis has (set with `CONFIG SET`, which the shared Redis must not see).

use fleet_queue::{Broker, Error};
use fred::{cmd, prelude::*, types::Value};

use crate::support::PrivateRedis;

const EVICTING: [&str; 7] = [
    "allkeys-lru",
    "volatile-lru",
    "allkeys-lfu",
    "volatile-lfu",
    "allkeys-random",
    "volatile-random",
    "volatile-ttl",
];

async fn set_policy(url: &str, policy: &str) {
    let raw = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    let _: Value = raw
        .custom(cmd!("CONFIG"), vec!["SET", "maxmemory-policy", policy])
        .await
        .unwrap();
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn only_noeviction_is_accepted_unless_eviction_is_allowed() {
    let Some(redis) = PrivateRedis::start(&["--maxmemory", "64mb"]).await else {
        return;
    };
    let broker = Broker::connect(&redis.url(), "server-check").await.unwrap();

    set_policy(&redis.url(), "noeviction").await;
    let facts = broker.check_server(false).await.unwrap();
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].maxmemory_policy, "noeviction");
    assert_eq!(facts[0].maxmemory, 64 * 1024 * 1024);
    assert!(facts[0].aof_enabled, "the private server runs with AOF");
    assert!(!facts[0].version.is_empty());

    for policy in EVICTING {
        set_policy(&redis.url(), policy).await;
        match broker.check_server(false).await {
            Err(Error::Invalid(reason)) => {
                assert!(reason.contains(policy), "{policy}: {reason}");
                assert!(reason.contains("FLEET_ALLOW_EVICTION"), "{reason}");
            }
            other => panic!("{policy} was not refused: {other:?}"),
        }
        let facts = broker.check_server(true).await.unwrap();
        assert_eq!(facts[0].maxmemory_policy, policy);
    }

    // How a service connects: the same refusal, as an error, not a wait.
    let refused = Broker::connect_for_service(&redis.url(), "server-check", false).await;
    assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    set_policy(&redis.url(), "noeviction").await;
    Broker::connect_for_service(&redis.url(), "server-check", false)
        .await
        .unwrap();
}

#[tokio::test]
async fn aof_off_is_reported_not_refused() {
    let Some(redis) = PrivateRedis::start(&["--appendonly", "no"]).await else {
        return;
    };
    let broker = Broker::connect(&redis.url(), "server-check").await.unwrap();
    let facts = broker.check_server(false).await.unwrap();
    assert!(!facts[0].aof_enabled);
}
