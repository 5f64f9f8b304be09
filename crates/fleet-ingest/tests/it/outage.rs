//! Redis going away under a running ingest: a TCP proxy between ingest and Redis is cut, requests
//! get 503 with nothing half-written, and ingest accepts again once the proxy is back.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::StatusCode;
use fleet_ingest::{AppState, app};
use fleet_queue::Broker;
use fleet_runtime::{Tenants, TenantsHandle};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::helpers::*;

/// A TCP proxy to the test Redis that can be cut (every connection dropped, the port closed) and
/// restored on the same port.
struct Proxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(addr: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut redis) = tokio::net::TcpStream::connect("127.0.0.1:6379").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut redis).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { addr, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_lost_mid_flight_gives_503_then_recovers() {
    let prefix = test_prefix();
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap()).await;
    let via_proxy = format!("redis://{}", proxy.addr);
    let broker = Broker::connect(&via_proxy, &prefix).await.unwrap();
    let state = AppState::with_broker(
        config(&prefix),
        TenantsHandle::new(Tenants::parse(TENANTS).unwrap()),
        broker,
    );
    let router = app(state.clone());
    let post = |id: &str| signed_meta_post("acme", &meta_text_body(&[id]));
    let status = |r: axum::response::Response| r.status();

    assert_eq!(
        status(
            tower::ServiceExt::oneshot(router.clone(), post("wamid.O1"))
                .await
                .unwrap()
        ),
        StatusCode::OK
    );

    proxy.cut();
    // The first request after the cut fails on the lost connection (or its timeout): 503.
    let reply = tower::ServiceExt::oneshot(router.clone(), post("wamid.O2"))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers().contains_key("retry-after"));
    // Later ones are refused at once from the cached health, without waiting on Redis.
    let started = std::time::Instant::now();
    let reply = tower::ServiceExt::oneshot(router.clone(), post("wamid.O3"))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fast 503 while redis is down"
    );

    // Back on the same port: the client reconnects and the backlog check clears the flag.
    let _proxy = Proxy::start(proxy.addr).await;
    let mut recovered = false;
    for _ in 0..100 {
        state.refresh_backlog().await;
        let reply = tower::ServiceExt::oneshot(router.clone(), post("wamid.O2"))
            .await
            .unwrap();
        if reply.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "ingest accepts again once redis is back");

    // Exactly the accepted messages are queued: O1 and O2, nothing from the refused attempts.
    let direct = Broker::connect(REDIS_URL, &prefix).await.unwrap();
    assert_eq!(
        direct
            .queue(fleet_core::INBOUND_QUEUE)
            .backlog()
            .await
            .unwrap(),
        2
    );
    cleanup(prefix);
}
