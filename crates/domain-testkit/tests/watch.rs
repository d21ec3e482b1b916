//! A subscription outlives what happens to the cluster under it: a manager that restarts
//! (its holder stream ends) and a node that restarts (its stream ends) are followed
//! again, and an item stored meanwhile still shows, once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use domain_client::client::{Client, ClientConfig, Upload};
use domain_manager::{Manager, ManagerConfig};
use domain_node::NodeConfig;
use domain_proto::DomainId;
use domain_proto::domain_data::Query;
use domain_testkit::{manager_addr, start_node};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_goes_on_across_a_manager_restart_and_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let listen = domain_testkit::free_loopback_tcp().unwrap();
    let start_manager = || {
        let mut config = ManagerConfig::new(dir.path().join("manager"));
        config.listen = vec![listen.clone()];
        config.tick_interval = Duration::from_millis(200);
        Manager::start(config)
    };
    let mut manager = start_manager().await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    let node_config = || {
        let mut config = NodeConfig::new(addr.clone(), dir.path().join("node")).unwrap();
        config.join_interval = Duration::from_millis(300);
        config
    };
    let node = start_node(node_config()).await.unwrap();
    let config = ClientConfig {
        connect_patience: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let client = Client::start(
        domain_cluster::identity::Identity::generate(),
        Some(addr.clone()),
        config,
    )
    .await
    .unwrap();
    let domain = DomainId::new("watched").unwrap();
    let upload = |name: &'static str| {
        let client = client.clone();
        let domain = domain.clone();
        async move {
            client
                .upload(
                    &domain,
                    &[Upload::bytes(name.as_bytes().to_vec(), name, "txt")],
                )
                .await
                .unwrap()
                .remove(0)
        }
    };
    let first = upload("first").await;
    let mut watch = client.subscribe(&domain, &Query::default()).await.unwrap();
    assert_eq!(next(&mut watch).await.unwrap().id, first.id);

    manager.shutdown().await.unwrap();
    manager = start_manager().await.unwrap();
    let second = upload("second").await;
    // Errors on the way (a node's stream ending) are reported; the item still comes.
    loop {
        if let Ok(item) = next(&mut watch).await {
            assert_eq!(item.id, second.id, "each item once");
            break;
        }
    }

    node.shutdown().await.unwrap();
    let node = start_node(node_config()).await.unwrap();
    let third = upload("third").await;
    loop {
        if let Ok(item) = next(&mut watch).await {
            assert_eq!(item.id, third.id, "each item once");
            break;
        }
    }
    watch.unsubscribe().await;
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    manager.shutdown().await.unwrap();
}

/// The subscription's next item or error, within [`WAIT`].
async fn next(
    watch: &mut domain_client::client::Subscription,
) -> Result<domain_proto::domain_data::Metadata, domain_client::client::ClientError> {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("an item in time")
        .expect("the subscription goes on")
}
