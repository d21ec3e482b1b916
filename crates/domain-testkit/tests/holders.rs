//! The manager's holder index on a real cluster in this process: listing, downloading
//! and watching ask exactly the nodes that hold data of the domain, whatever put it
//! there (an upload through the manager, a direct upload with a token from elsewhere),
//! also after the manager lost its state, and a holder that is down does not keep the
//! others from answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use domain_auth::{DomainKeyStore, TaskClaims};
use domain_client::client::{Client, ClientConfig, Direct, Upload};
use domain_cluster::addr::loopback_tcp;
use domain_cluster::identity::Identity;
use domain_cluster::{Multiaddr, PeerId};
use domain_manager::{DomainSpec, Manager, ManagerConfig};
use domain_merkle::root_of;
use domain_node::{Node, NodeConfig};
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::STORE_V1;
use domain_testkit::{admit, manager_addr, start_node};

const WAIT: Duration = Duration::from_secs(60);
const DOMAIN: &str = "lab";

/// A manager serving domain `lab` to `client`, on `listen`, keeping its state in `dir`.
async fn manager(dir: &Path, listen: Multiaddr, client: PeerId) -> Manager {
    let mut config = ManagerConfig::new(dir);
    config.listen = vec![listen];
    config.node_timeout = Duration::from_secs(3);
    config.domains.push(DomainSpec {
        id: DOMAIN.into(),
        allow: vec![client.to_string()],
        replication: None,
    });
    Manager::start(config).await.unwrap()
}

/// A node on `dir`, admitted to `manager` (as its operator would) and joined.
async fn node(dir: &Path, manager: &Manager) -> Node {
    admit(manager, dir).unwrap();
    let mut config = NodeConfig::new(manager_addr(manager).unwrap(), dir).unwrap();
    config.join_interval = Duration::from_millis(300);
    start_node(config).await.unwrap()
}

async fn start_client(identity: Identity, manager: &Multiaddr) -> Client {
    start_client_with(identity, manager, ClientConfig::default()).await
}

/// A client with `config`, patient for a second only with nodes that are down.
async fn start_client_with(
    identity: Identity,
    manager: &Multiaddr,
    config: ClientConfig,
) -> Client {
    let config = ClientConfig {
        connect_patience: Duration::from_secs(1),
        ..config
    };
    domain_testkit::start_client(identity, manager, config)
        .await
        .unwrap()
}

/// Uploads `bytes` straight to `node` with a token signed here with the domain's key
/// (what a script given a token by its operator does): no job of the manager's.
async fn upload_direct(
    client: &Client,
    keys: &Path,
    node: &Node,
    name: &str,
    bytes: &[u8],
) -> Metadata {
    let key = DomainKeyStore::open(keys).unwrap().key(DOMAIN).unwrap();
    let claims = TaskClaims::new(
        DOMAIN,
        "direct-job",
        name,
        client.peer_id().to_string(),
        node.peer_id().to_string(),
        STORE_V1,
        SystemTime::now(),
        Duration::from_secs(600),
    );
    let direct = Direct {
        node: node.ready_addr().await.unwrap(),
        token: key.issue(&claims).unwrap(),
    };
    let domain = DomainId::new(DOMAIN).unwrap();
    let stored = client
        .upload_direct(
            &direct,
            &domain,
            &[Upload::bytes(bytes.to_vec(), name, "bin")],
        )
        .await
        .unwrap();
    stored.into_iter().next().unwrap()
}

/// The ids listed through the manager, once they are `expected` (or the wait ends).
async fn listed_eventually(client: &Client, expected: &BTreeSet<String>) -> BTreeSet<String> {
    let domain = DomainId::new(DOMAIN).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed: BTreeSet<String> = client
            .list(&domain, &Query::default())
            .await
            .unwrap()
            .into_iter()
            .map(|item| item.id)
            .collect();
        if &listed == expected || tokio::time::Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A manager serving `lab`, nodes a and b joined to it, and a client allowed in `lab`.
struct TwoNodes {
    dir: tempfile::TempDir,
    _manager: Manager,
    a: Node,
    b: Node,
    client: Client,
    /// The manager's domain keys, to sign direct tokens with.
    keys: std::path::PathBuf,
}

async fn two_nodes() -> TwoNodes {
    two_nodes_with(ClientConfig::default()).await
}

/// [`two_nodes`], with a client of `config`.
async fn two_nodes_with(config: ClientConfig) -> TwoNodes {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    let manager = manager(&dir.path().join("m"), loopback_tcp(), identity.peer_id()).await;
    let addr = manager.tcp_addr().unwrap().clone();
    let a = node(&dir.path().join("a"), &manager).await;
    let b = node(&dir.path().join("b"), &manager).await;
    let client = start_client_with(identity, &addr, config).await;
    let keys = dir.path().join("m").join("keys");
    TwoNodes {
        dir,
        _manager: manager,
        a,
        b,
        client,
        keys,
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_stored_directly_on_a_node_is_listed_and_downloaded_through_the_manager() {
    let TwoNodes {
        dir,
        _manager,
        a,
        b,
        client,
        keys,
    } = two_nodes().await;
    let domain = DomainId::new(DOMAIN).unwrap();

    // One item through the manager (it lands on a), one straight onto b.
    let through = client
        .upload(&domain, &[Upload::bytes(bytes(9000, 1), "through", "bin")])
        .await
        .unwrap()
        .remove(0);
    let direct = upload_direct(&client, &keys, &b, "direct", &bytes(20_000, 2)).await;

    let expected = BTreeSet::from([through.id.clone(), direct.id.clone()]);
    assert_eq!(listed_eventually(&client, &expected).await, expected);
    let out = dir.path().join("out");
    let downloads = client
        .download(&domain, &[direct.id.clone(), through.id.clone()], &out)
        .await
        .unwrap();
    assert!(downloads.missing.is_empty() && downloads.unanswered.is_empty());
    assert_eq!(
        root_of(&std::fs::read(out.join(&direct.id)).unwrap()).to_string(),
        direct.hash.unwrap()
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_items_and_large_ones_go_up_on_one_stream_and_come_back_as_files() {
    let TwoNodes {
        dir,
        _manager,
        a,
        b,
        client,
        ..
    } = two_nodes().await;
    let domain = DomainId::new(DOMAIN).unwrap();
    // Sizes with a reason each: empty; a small file; the largest item read whole into
    // memory on both sides; the smallest streamed; one sent resumable (1 MiB and more),
    // which waits for every earlier answer. 300 items: several pipeline windows and
    // several download batches.
    let sizes = [0, 4096, 64 << 10, (64 << 10) + 1, 3 << 20];
    let contents: Vec<Vec<u8>> = (0..300)
        .map(|i| bytes(sizes[i % sizes.len()] + i % 7, i as u8))
        .collect();
    let uploads: Vec<Upload> = contents
        .iter()
        .enumerate()
        .map(|(i, content)| Upload::bytes(content.clone(), &format!("item-{i}"), "bin"))
        .collect();
    let stored = client.upload(&domain, &uploads).await.unwrap();
    assert_eq!(stored.len(), contents.len());
    for (i, (metadata, content)) in stored.iter().zip(&contents).enumerate() {
        assert_eq!(metadata.name, format!("item-{i}"), "answers in order");
        assert_eq!(metadata.hash, Some(root_of(content).to_string()));
    }

    let out = dir.path().join("out");
    let ids: Vec<String> = stored.iter().map(|m| m.id.clone()).collect();
    let downloads = client.download(&domain, &ids, &out).await.unwrap();
    assert!(downloads.missing.is_empty() && downloads.unanswered.is_empty());
    assert_eq!(downloads.items.len(), ids.len());
    for (metadata, content) in stored.iter().zip(&contents) {
        assert_eq!(
            &std::fs::read(out.join(&metadata.id)).unwrap(),
            content,
            "{}",
            metadata.name
        );
    }
    // Every file was published: no partial file is left behind.
    let files = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(files, ids.len());
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_manager_restart_with_its_state_emptied_listing_finds_every_item_once_nodes_rejoin()
{
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    let state = dir.path().join("m");
    // A fixed port, so that the nodes find the manager again where they knew it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let first = manager(&state, listen.clone(), identity.peer_id()).await;
    let addr = first.tcp_addr().unwrap().clone();
    let a = node(&dir.path().join("a"), &first).await;
    let b = node(&dir.path().join("b"), &first).await;
    let client = start_client(identity.clone(), &addr).await;
    let keys = state.join("keys");
    let mut expected = BTreeSet::new();
    for (i, node) in [&a, &b, &a].into_iter().enumerate() {
        let name = format!("item-{i}");
        let stored = upload_direct(&client, &keys, node, &name, &bytes(100 + i, i as u8)).await;
        expected.insert(stored.id);
    }
    assert_eq!(listed_eventually(&client, &expected).await, expected);
    client.shutdown().await.unwrap();

    // The scheduler's state (jobs, registry, holder index) is gone; keys and identity stay.
    first.shutdown().await.unwrap();
    std::fs::remove_file(state.join("scheduler.redb")).unwrap();
    let second = manager(&state, listen, identity.peer_id()).await;
    let client = start_client(identity, &addr).await;
    assert_eq!(listed_eventually(&client, &expected).await, expected);
    drop((a, b, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_is_down_is_reported_and_the_others_still_answer() {
    let TwoNodes {
        dir,
        _manager,
        a,
        b,
        client,
        keys,
    } = two_nodes().await;
    let on_a = upload_direct(&client, &keys, &a, "on-a", &bytes(10, 1)).await;
    let on_b = upload_direct(&client, &keys, &b, "on-b", &bytes(10, 2)).await;
    let both = BTreeSet::from([on_a.id.clone(), on_b.id.clone()]);
    assert_eq!(listed_eventually(&client, &both).await, both);

    let a_id = a.peer_id();
    a.shutdown().await.unwrap();
    let domain = DomainId::new(DOMAIN).unwrap();
    // Still registered (the manager has not timed it out yet), then dropped: either way
    // b answers and a is reported.
    for round in ["registered", "dropped"] {
        let downloads = client
            .download_matching(&domain, &Query::default(), &dir.path().join(round))
            .await
            .unwrap();
        let got: Vec<&str> = downloads
            .items
            .iter()
            .map(|d| d.metadata.id.as_str())
            .collect();
        assert_eq!(got, [on_b.id.as_str()], "{round}");
        assert_eq!(downloads.unanswered, [a_id], "{round}");
        // Past the manager's node timeout (3 s) with a margin.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_a_holder_that_appears_later() {
    let TwoNodes {
        dir: _dir,
        _manager,
        a,
        b,
        client,
        keys,
    } = two_nodes().await;
    let domain = DomainId::new(DOMAIN).unwrap();
    let first = upload_direct(&client, &keys, &a, "first", &bytes(10, 1)).await;
    let only_a = BTreeSet::from([first.id.clone()]);
    assert_eq!(listed_eventually(&client, &only_a).await, only_a);

    let mut watch = client.subscribe(&domain, &Query::default()).await.unwrap();
    let seen = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert_eq!(seen.unwrap().unwrap().id, first.id);
    // b holds nothing of the domain until now: the watch learns of it from the manager.
    let later = upload_direct(&client, &keys, &b, "later", &bytes(10, 2)).await;
    let seen = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert_eq!(seen.unwrap().unwrap().id, later.id);
    watch.unsubscribe().await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_its_tokens_and_shows_each_item_once() {
    // Tokens of 3 s: each node ends its stream within 3 s, and the watch must have
    // renewed it on a fresh token by then, several times over.
    let config = ClientConfig {
        subscription_timeout: std::time::Duration::from_secs(3),
        ..ClientConfig::default()
    };
    let TwoNodes {
        dir: _dir,
        _manager,
        a,
        b,
        client,
        keys,
    } = two_nodes_with(config).await;
    let domain = DomainId::new(DOMAIN).unwrap();
    let first = upload_direct(&client, &keys, &a, "first", &bytes(10, 1)).await;
    let only_a = BTreeSet::from([first.id.clone()]);
    assert_eq!(listed_eventually(&client, &only_a).await, only_a);

    let mut watch = client.subscribe(&domain, &Query::default()).await.unwrap();
    // Uploads over 10 s (more than three tokens' lives), to both nodes, while the watch
    // renews its streams.
    let uploader = tokio::spawn({
        let (client, keys) = (client.clone(), keys.clone());
        async move {
            let mut stored = Vec::new();
            for round in 0..12_u8 {
                let node = if round % 2 == 0 { &a } else { &b };
                let name = format!("item-{round}");
                let data = bytes(10, round + 2);
                stored.push(upload_direct(&client, &keys, node, &name, &data).await.id);
                tokio::time::sleep(Duration::from_millis(850)).await;
            }
            (stored, a, b)
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 13 {
        let next = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("no item came");
        seen.push(next.expect("the watch ended").expect("a stream failed").id);
    }
    let (mut stored, a, b) = uploader.await.unwrap();
    stored.push(first.id);
    // A renewed stream sends every item again: none may show a second time.
    let again = tokio::time::timeout(Duration::from_secs(4), watch.next()).await;
    assert!(again.is_err(), "shown again: {again:?}");
    seen.sort();
    stored.sort();
    assert_eq!(seen, stored);
    watch.unsubscribe().await;
    drop((a, b));
}
