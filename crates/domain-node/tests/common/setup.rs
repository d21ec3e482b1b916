//! A real node joined to a manager stand-in, and a client with tokens of the
//! stand-in's domain key.

use std::time::{Duration, SystemTime};

use domain_auth::{DomainKey, TaskClaims};
use domain_capabilities::{CapabilityError, Limits, StoreSender, open_load};
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, Multiaddr};
use domain_merkle::root_of;
use domain_node::{Node, NodeConfig};
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::ConsumeDataInputV1;

use super::{DOMAIN, StandIn, tcp_loopback, within};

/// The largest item [`Setup::load`] reads into memory.
const MAX_LOADED_ITEM: u64 = 64 << 20;

/// A client peer on loopback that knows the manager at `manager`.
pub fn client(manager: &Multiaddr) -> ClusterHandle {
    let config = ClusterConfig::new(Identity::generate(), Role::Client)
        .with_listen_addrs([tcp_loopback()])
        .with_bootstrap(manager.clone());
    let (client, _) = Cluster::start(config).unwrap();
    client
}

/// A manager stand-in, a node joined to it, and a client that knows both.
pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub key: DomainKey,
    pub manager_identity: Identity,
    pub manager: StandIn,
    pub node: Node,
    pub client: ClusterHandle,
}

impl Setup {
    pub async fn start(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = DomainKey::generate(DOMAIN).unwrap();
        let manager_identity = Identity::generate();
        let mut manager = StandIn::start(manager_identity.clone(), tcp_loopback(), &key).await;

        let mut config = NodeConfig::new(manager.addr.clone(), dir.path().join("node")).unwrap();
        config.listen = vec![tcp_loopback()];
        config.name = Some("node-a".into());
        config.store_capacity = 4;
        config.load_capacity = -1;
        configure(&mut config);
        let node = Node::start(config).await.unwrap();
        within("the first join", node.joined()).await.unwrap();
        let join = manager.next_join().await;
        assert_eq!(join.node.id, node.peer_id().to_string());

        let client = client(&manager.addr);
        client.dial(node.ready_addr().await.unwrap()).await.unwrap();
        Self {
            _dir: dir,
            key,
            manager_identity,
            manager,
            node,
            client,
        }
    }

    /// A task token, issued as the manager does once it has accepted the job
    /// and subscribed to its topic.
    pub async fn token(&self, job_id: &str, task: &str, endpoint: &str) -> String {
        self.manager.cluster.subscribe(job_id).await.unwrap();
        let claims = TaskClaims::new(
            DOMAIN,
            job_id,
            task,
            self.client.local_peer_id().to_string(),
            self.node.peer_id().to_string(),
            endpoint,
            SystemTime::now(),
            Duration::from_secs(60),
        );
        self.key.issue(&claims).unwrap()
    }

    /// Uploads `items` on one `/store/v1` stream, checking the node's root of
    /// each against the content's; the ids the node gave them.
    pub async fn store(
        &self,
        token: &str,
        items: &[(&str, &[u8])],
    ) -> Result<Vec<String>, CapabilityError> {
        let stream = self
            .client
            .open_stream(self.node.peer_id(), STORE_V1)
            .await
            .unwrap();
        let mut sender = StoreSender::open(stream, token, DOMAIN, Limits::default()).await?;
        let mut ids = Vec::new();
        for (name, content) in items {
            let item = UpsertMetadata {
                name: (*name).into(),
                data_type: "bin".into(),
                is_new: true,
                ..UpsertMetadata::default()
            };
            let stored = sender.send_bytes(item, content.to_vec()).await?;
            assert_eq!(stored.hash, Some(root_of(content).to_string()));
            ids.push(stored.id);
        }
        sender.finish().await?;
        Ok(ids)
    }

    /// Downloads the items `ids` on one `/load/v1` stream, as (name, content).
    pub async fn load(&self, token: &str, ids: &[String]) -> Vec<(String, Vec<u8>)> {
        let stream = self
            .client
            .open_stream(self.node.peer_id(), LOAD_V1)
            .await
            .unwrap();
        let request = ConsumeDataInputV1 {
            query: Query {
                ids: ids.to_vec(),
                ..Query::default()
            },
            keep_alive: false,
            ..Default::default()
        };
        let (mut items, _unsubscriber) =
            open_load(stream, token, DOMAIN, request, Limits::default())
                .await
                .unwrap();
        let mut loaded = Vec::new();
        while let Some(item) = items.next().await.unwrap() {
            let (metadata, content) = item.read_to_vec(MAX_LOADED_ITEM).await.unwrap();
            loaded.push((metadata.name, content));
        }
        loaded
    }

    pub async fn stop(self) {
        self.client.shutdown().await.unwrap();
        self.node.shutdown().await.unwrap();
        self.manager.stop().await;
    }
}
