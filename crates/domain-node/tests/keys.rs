//! Domain keys fetched from a manager stand-in over `/public-key/v1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use domain_auth::DomainKey;
use domain_capabilities::PublicKeySource;
use domain_cluster::addr::Protocol;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, Managers, Multiaddr};
use domain_node::ManagerKeys;

mod common;

use common::{DOMAIN, StandIn, tcp_loopback, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_once_cached_and_refetched_after_a_rotation() {
    let old = DomainKey::generate(DOMAIN).unwrap();
    let identity = Identity::generate();
    let manager = StandIn::start(identity.clone(), tcp_loopback(), &old).await;
    let addr = manager.addr.clone();
    let config = ClusterConfig::new(Identity::generate(), Role::Client)
        .with_listen_addrs([tcp_loopback()])
        .with_bootstrap(addr.clone());
    let (cluster, _) = Cluster::start(config).unwrap();
    let managers = Managers::new(cluster.clone(), [addr.clone()]).unwrap();
    let keys =
        ManagerKeys::new(cluster.clone(), managers).with_min_refresh_interval(Duration::ZERO);

    assert_eq!(keys.cached(DOMAIN), None);
    let fetched = within("a key", keys.public_key(DOMAIN)).await.unwrap();
    assert_eq!(fetched, old.public_key());
    assert_eq!(keys.cached(DOMAIN), Some(old.public_key()));
    let unknown = within("no key", keys.public_key("made-up")).await;
    assert!(unknown.unwrap_err().contains("no key"));

    // The manager comes back with a new key for the domain.
    manager.stop().await;
    let new = DomainKey::generate(DOMAIN).unwrap();
    let listen: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    let restarted = StandIn::start(identity, listen, &new).await;

    let cached = within("the cached key", keys.public_key(DOMAIN)).await;
    assert_eq!(cached.unwrap(), old.public_key());
    // The first fetch may still meet the connection to the stopped manager: a failed
    // fetch answers None, so ask until the restarted manager answers.
    let refreshed = within("a refreshed key", async {
        loop {
            if let Some(key) = keys.refreshed_key(DOMAIN).await {
                break Some(key);
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(refreshed, Some(new.public_key()));
    assert_eq!(keys.cached(DOMAIN), Some(new.public_key()));

    cluster.shutdown().await.unwrap();
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_failure_soon_after_a_fetch_asks_the_manager_nothing() {
    let key = DomainKey::generate(DOMAIN).unwrap();
    let manager = StandIn::start(Identity::generate(), tcp_loopback(), &key).await;
    let config = ClusterConfig::new(Identity::generate(), Role::Client)
        .with_listen_addrs([tcp_loopback()])
        .with_bootstrap(manager.addr.clone());
    let (cluster, _) = Cluster::start(config).unwrap();
    let managers = Managers::new(cluster.clone(), [manager.addr.clone()]).unwrap();
    let keys = ManagerKeys::new(cluster.clone(), managers);
    within("a key", keys.public_key(DOMAIN)).await.unwrap();
    // Forged tokens must not turn into requests to the manager.
    assert_eq!(keys.refreshed_key(DOMAIN).await, None);
    cluster.shutdown().await.unwrap();
    manager.stop().await;
}
