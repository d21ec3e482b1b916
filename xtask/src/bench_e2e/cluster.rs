//! The peers of a bench run: a manager with the bench's domain, the nodes it starts, and
//! the `domain` command run as the bench's client, with the tokens signed for it.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use domain_auth::{DomainKey, DomainKeyStore, TaskClaims};
use domain_cluster::identity::Identity;
use domain_cluster::{Multiaddr, PeerId};
use domain_e2e::{Output, release_binary};
use domain_proto::protocols::STORE_V1;

use super::procfs::{cpu_time, peak_rss};
use super::{COMMAND, DOMAIN, Measured, TOKEN_LIFETIME, Transport, path_arg, say};
use crate::peers::Peers;
use domain_cluster::addr::peer_of;

/// A manager, a domain, a client identity and the key to sign its tokens.
pub(super) struct BenchCluster<'a> {
    pub(super) peers: &'a Peers,
    pub(super) dir: PathBuf,
    /// The manager's name among the peers.
    name: String,
    /// The manager's address.
    pub(super) manager: String,
    /// The manager's process id.
    pub(super) manager_pid: u32,
    key: DomainKey,
    client: PeerId,
    /// The client's identity file, as an argument.
    identity: String,
}

/// A node the bench started, on its own store in `<dir>/<name>`, joined to the manager.
pub(super) struct BenchNode {
    pub(super) name: String,
    dir: PathBuf,
    pub(super) pid: u32,
    /// The addresses it listens on.
    listening: Vec<String>,
}

impl BenchNode {
    /// Its address on `transport`, and its peer id.
    pub(super) fn addr(&self, transport: Transport) -> anyhow::Result<(Multiaddr, PeerId)> {
        let addr = transport.pick(&self.listening)?;
        let peer = peer_of(&addr).with_context(|| format!("{addr} names no peer"))?;
        Ok((addr, peer))
    }
}

/// What one upload took.
pub(super) struct Uploaded {
    /// The `domain upload` process, start to exit; CPU time of it and of the node.
    pub(super) measured: Measured,
    /// The node's `VmHWM` at the end, in bytes.
    pub(super) node_hwm: u64,
}

impl<'a> BenchCluster<'a> {
    /// Creates the domain (the client on its allow-list) in the data folder `<dir>/<name>`
    /// and starts the manager `name` on it. Every cluster of a run has the same client.
    pub(super) fn start(dir: &Path, peers: &'a Peers, name: &str) -> anyhow::Result<Self> {
        let client_dir = dir.join("client");
        std::fs::create_dir_all(&client_dir)
            .with_context(|| format!("creating {}", client_dir.display()))?;
        let identity = client_dir.join("identity.key");
        let client = Identity::load_or_create(&identity)
            .with_context(|| format!("creating the client identity {}", identity.display()))?
            .peer_id();
        let identity = path_arg(&identity);

        let manager_dir = path_arg(&dir.join(name));
        let program = release_binary("domain-manager").context("locating domain-manager")?;
        let client_id = client.to_string();
        let created = domain_e2e::run(
            "domain-manager domain create",
            &program,
            [
                "domain",
                "create",
                DOMAIN,
                "--data-dir",
                &manager_dir,
                "--allow",
                &client_id,
            ],
            COMMAND,
        )?;
        ensure!(
            created.status.success(),
            "domain-manager domain create failed ({}): {}",
            created.status,
            created.stderr.trim()
        );
        let key = DomainKeyStore::open(dir.join(name).join("keys"))
            .and_then(|keys| keys.key(DOMAIN))
            .context("reading the domain's key from the manager's data folder")?;

        let (ready, manager_pid) =
            peers.start(name, &program, &["run", "--data-dir", &manager_dir])?;
        say(&format!("{name} ready at {}", ready.addr));
        Ok(Self {
            peers,
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            manager: ready.addr,
            manager_pid,
            key,
            client,
            identity,
        })
    }

    /// Stops the manager.
    pub(super) fn stop(self) {
        self.peers.stop(&self.name);
    }

    /// Starts the node `name` on its store `<dir>/<name>`: empty when the folder is new,
    /// as a previous process of that name left it otherwise.
    pub(super) fn start_node(&self, name: &str) -> anyhow::Result<BenchNode> {
        self.start_node_on(name, &[])
    }

    /// As [`start_node`](Self::start_node), listening on `listen` only (all three
    /// loopback transports when empty).
    pub(super) fn start_node_on(&self, name: &str, listen: &[&str]) -> anyhow::Result<BenchNode> {
        let dir = self.dir.join(name);
        let program = release_binary("domain-node").context("locating domain-node")?;
        let dir_arg = path_arg(&dir);
        // The manager declares the bench's domain, so it admits only the nodes its operator
        // admitted: this one's peer id, as an operator would.
        let id = domain_e2e::run(
            "domain-node id",
            &program,
            ["id", "--data-dir", &dir_arg],
            COMMAND,
        )?;
        ensure!(
            id.status.success(),
            "domain-node id failed: {}",
            id.stderr.trim()
        );
        let manager_dir = path_arg(&self.dir.join(&self.name));
        let allowed = domain_e2e::run(
            "domain-manager node allow",
            &release_binary("domain-manager").context("locating domain-manager")?,
            [
                "node",
                "allow",
                id.stdout.trim(),
                "--data-dir",
                &manager_dir,
            ],
            COMMAND,
        )?;
        ensure!(
            allowed.status.success(),
            "domain-manager node allow failed: {}",
            allowed.stderr.trim()
        );
        let mut args = vec![
            "run",
            "--manager",
            &self.manager,
            "--data-dir",
            &dir_arg,
            "--name",
            name,
        ];
        for addr in listen {
            args.extend(["--listen", addr]);
        }
        let (ready, pid) = self.peers.start(name, &program, &args)?;
        Ok(BenchNode {
            name: name.to_owned(),
            dir,
            pid,
            listening: ready.listening,
        })
    }

    /// Stops the node and removes its store.
    pub(super) fn remove_node(&self, node: BenchNode) -> anyhow::Result<()> {
        self.peers.stop(&node.name);
        std::fs::remove_dir_all(&node.dir)
            .with_context(|| format!("removing {}", node.dir.display()))
    }

    /// A token that lets the client open `endpoint` on `node` for the domain.
    pub(super) fn token(&self, task: &str, node: PeerId, endpoint: &str) -> anyhow::Result<String> {
        self.token_for(self.client, task, node, endpoint)
    }

    /// A token that lets `client` open `endpoint` on `node` for the domain.
    pub(super) fn token_for(
        &self,
        client: PeerId,
        task: &str,
        node: PeerId,
        endpoint: &str,
    ) -> anyhow::Result<String> {
        let claims = TaskClaims::new(
            DOMAIN,
            "bench-e2e",
            task,
            client.to_string(),
            node.to_string(),
            endpoint,
            SystemTime::now(),
            TOKEN_LIFETIME,
        );
        self.key
            .issue(&claims)
            .with_context(|| format!("signing a {endpoint} token"))
    }

    /// The arguments of `domain <args>` as the bench's client.
    pub(super) fn client_args<'s>(&'s self, args: &[&'s str]) -> Vec<&'s str> {
        let mut all = args.to_vec();
        all.extend(["--identity", self.identity.as_str()]);
        all
    }

    /// Runs `domain <args>` as the bench's client to its end; fails unless it succeeded.
    pub(super) fn domain(&self, args: &[&str]) -> anyhow::Result<Output> {
        let program = release_binary("domain").context("locating domain")?;
        let what = format!("domain {}", args.first().copied().unwrap_or_default());
        let output = domain_e2e::run(&what, &program, self.client_args(args), COMMAND)?;
        ensure!(
            output.status.success(),
            "{what} failed ({}): {}",
            output.status,
            output.stderr.trim()
        );
        Ok(output)
    }

    /// As [`domain`](Self::domain), timed: the process's time, start to exit, and the CPU
    /// time of it and of the node's process `node`.
    pub(super) fn timed_domain(
        &self,
        args: &[&str],
        node: u32,
    ) -> anyhow::Result<(Output, Measured)> {
        let node_cpu = cpu_time(&node.to_string())?.own;
        let client_cpu = cpu_time("self")?.children;
        let started = Instant::now();
        let output = self.domain(args)?;
        let took = started.elapsed();
        // The client was reaped by now, so its time counts among this process's children.
        let cpu = cpu_time("self")?.children.saturating_sub(client_cpu)
            + cpu_time(&node.to_string())?.own.saturating_sub(node_cpu);
        Ok((output, Measured { took, cpu }))
    }

    /// Uploads `file` straight to `node` over `transport`; the item's id, and what it took.
    pub(super) fn upload_to(
        &self,
        node: &BenchNode,
        file: &Path,
        transport: Transport,
    ) -> anyhow::Result<(String, Measured)> {
        let (addr, peer) = node.addr(transport)?;
        let token = self.token(&node.name, peer, STORE_V1)?;
        let (file, addr) = (path_arg(file), addr.to_string());
        let args = [
            "upload", &file, "--domain", DOMAIN, "--node", &addr, "--token", &token,
        ];
        let (output, measured) = self
            .timed_domain(&args, node.pid)
            .with_context(|| format!("uploading to {} over {}", node.name, transport.name()))?;
        // The client has compared the node's root with its own: one line per stored item.
        let id = one_item(&output.stdout).context("domain upload")?;
        Ok((id, measured))
    }

    /// Starts a node named `name` with an empty store, uploads `file` to it over
    /// `transport`, reads its peak RSS, stops it and removes its data.
    pub(super) fn upload(
        &self,
        name: &str,
        file: &Path,
        transport: Transport,
    ) -> anyhow::Result<Uploaded> {
        let node = self.start_node(name)?;
        let (_, measured) = self.upload_to(&node, file, transport)?;
        let node_hwm = peak_rss(node.pid)?;
        self.remove_node(node)?;
        Ok(Uploaded { measured, node_hwm })
    }
}

/// The id of the one item a `domain upload` or `domain download` printed
/// (`<id>  <root>  <path>`), or why there is not exactly one.
pub(super) fn one_item(stdout: &str) -> anyhow::Result<String> {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines.as_slice() else {
        bail!("printed {stdout:?}, not one item line");
    };
    let mut fields = line.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(id), Some(_root)) => Ok(id.to_owned()),
        _ => bail!("printed {line:?}, not `<id>  <root>  <path>`"),
    }
}
