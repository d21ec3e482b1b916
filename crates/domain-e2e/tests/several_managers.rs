//! Three `domain-manager` processes on one etcd, two nodes and the `domain` command, each
//! given all three managers: the leader is killed (SIGKILL) while an upload streams, a
//! standby takes over, the upload ends with every root; then etcd itself is restarted under
//! the running managers. Every item is listed and downloads with its root throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{COMMAND, READY, binary, content, domain, domain_ok, item_lines, manager_ok};
use domain_client::client::{Client, ClientConfig};
use domain_cluster::identity::Identity;
use domain_cluster::{Multiaddr, PeerId};
use domain_e2e::{Process, free_port, run};
use domain_etcd::LocalEtcd;
use domain_proto::task::Status;

const DOMAIN: &str = "e2e";
/// Where the managers keep their state in etcd.
const PREFIX: &str = "/e2e/";
/// The managers' lease: a standby leads about one lease after the leader dies.
const LEASE: &str = "2s";
/// Bytes of each file of the upload that is cut by the kill: long enough to be streaming
/// when the kill comes, in a debug build as in a release one.
const FILE_BYTES: usize = 24 << 20;
const FILES: usize = 3;
/// Limit of the waits on the cluster, for debug builds on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

/// One manager: its data folder, address and process.
struct Manager {
    name: String,
    dir: PathBuf,
    addr: Multiaddr,
    args: Vec<String>,
    process: Option<Process>,
}

impl Manager {
    /// A manager with its data folder in `dir/<name>`, holding the key of domain `e2e`
    /// exported to `key` by the manager that made it (keys never go through etcd).
    fn prepare(dir: &Path, name: &str, etcd: &str, key: Option<&Path>) -> Self {
        let data = dir.join(name);
        domain_auth::create_private_dir(&data).unwrap();
        let peer = Identity::load_or_create(data.join("identity.key"))
            .unwrap()
            .peer_id();
        let data_arg = data.display().to_string();
        if let Some(key) = key {
            let key = key.display().to_string();
            manager_ok(&[
                "domain",
                "import",
                DOMAIN,
                "--data-dir",
                &data_arg,
                "--file",
                &key,
            ]);
        }
        let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port().unwrap());
        let addr = format!("{listen}/p2p/{peer}").parse().unwrap();
        let args = [
            "run",
            "--data-dir",
            &data_arg,
            "--listen",
            &listen,
            "--etcd",
            etcd,
            "--etcd-prefix",
            PREFIX,
            "--leader-lease",
            LEASE,
            "--tick-interval",
            "200ms",
        ]
        .map(str::to_owned)
        .to_vec();
        Self {
            name: name.to_owned(),
            dir: data,
            addr,
            args,
            process: None,
        }
    }

    /// Starts the process; a standby prints `ready` only once it leads.
    fn start(&mut self) {
        let log = self.dir.with_extension("log");
        self.process =
            Some(Process::spawn(&self.name, &binary("domain-manager"), &self.args, &log).unwrap());
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn log(&self) -> String {
        domain_e2e::tail(&self.dir.with_extension("log"), 30)
    }
}

/// The peer id of the node with data folder `data`, as its operator learns it.
fn node_id(data: &Path) -> PeerId {
    let data = data.display().to_string();
    let output = run(
        "domain-node id",
        &binary("domain-node"),
        ["id", "--data-dir", &data],
        COMMAND,
    )
    .unwrap();
    assert!(output.status.success(), "{}", output.stderr);
    output.stdout.trim().parse().unwrap()
}

/// Waits until `job_id`'s first task is PROCESSING (the node has the stream) on the
/// monitor of whichever manager leads; returns the job's id (the only job of the domain).
async fn wait_for_processing(watcher: &Client) -> String {
    let mut jobs = watcher.jobs().await.unwrap();
    loop {
        let job = tokio::time::timeout(WAIT, jobs.next())
            .await
            .expect("no upload job was processing in time")
            .unwrap()
            .expect("the monitor stream ended");
        if job.tasks.iter().any(|t| t.status() == Status::Processing) {
            return job.id;
        }
    }
}

/// Waits until the leader's monitor reports every task of `job_id` DONE.
async fn wait_for_done(watcher: &Client, job_id: &str) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(mut jobs) = watcher.jobs().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Ok(Some(job))) = tokio::time::timeout(WAIT, jobs.next()).await {
            if job.id != job_id {
                continue;
            }
            seen.push(job.tasks.iter().map(|t| t.status()).collect::<Vec<_>>());
            if !job.tasks.is_empty() && job.tasks.iter().all(|t| t.status() == Status::Done) {
                return;
            }
        }
    }
    panic!("job {job_id} did not end DONE on the new leader; its tasks were {seen:?}");
}

/// Lists domain `e2e` and downloads every item of `expected` (id → root) into `out`,
/// checking roots and bytes against `files` (id → original file).
fn check_every_item(dir: &Path, managers: &str, expected: &[(String, String, PathBuf)]) {
    let listing = domain(dir, &["list", "--domain", DOMAIN, "--manager", managers]);
    let listed = &listing.stdout;
    for (id, root, _) in expected {
        assert!(
            listed
                .lines()
                .any(|line| line.contains(id) && line.contains(root)),
            "item {id} with root {root} not listed ({}):\n{listed}\n{}",
            listing.status,
            listing.stderr
        );
    }
    let out = dir.join(format!("download-{}", expected.len()));
    std::fs::create_dir_all(&out).unwrap();
    let out_arg = out.display().to_string();
    let mut args = vec![
        "download",
        "--domain",
        DOMAIN,
        "--manager",
        managers,
        "--out",
        &out_arg,
    ];
    for (id, _, _) in expected {
        args.extend(["--id", id]);
    }
    let downloaded = item_lines(&domain_ok(dir, &args));
    assert_eq!(downloaded.len(), expected.len());
    for (id, root, original) in expected {
        let line = downloaded.iter().find(|l| l.id == *id).unwrap();
        assert_eq!(line.root, *root, "item {id}");
        assert_eq!(
            std::fs::read(&line.path).unwrap(),
            std::fs::read(original).unwrap(),
            "item {id}"
        );
    }
}

#[test]
fn a_standby_finishes_an_upload_whose_leader_was_killed_and_the_cluster_outlives_an_etcd_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let started = Instant::now();
    let phase = |what: &str| eprintln!("{:>6} ms  {what}", started.elapsed().as_millis());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut etcd = runtime.block_on(LocalEtcd::start()).unwrap();
    let endpoint = etcd.endpoint();

    // The client (`domain`'s identity) and a watcher may use the domain; two nodes join.
    let client_dir = dir.join("client");
    domain_auth::create_private_dir(&client_dir).unwrap();
    let client = Identity::load_or_create(client_dir.join("identity.key")).unwrap();
    let watcher = Identity::generate();
    let node_dirs = [dir.join("node-1"), dir.join("node-2")];
    let nodes: Vec<PeerId> = node_dirs.iter().map(|d| node_id(d)).collect();
    let clients = [client.peer_id(), watcher.peer_id()];

    // The operator declares the domain and admits the nodes once, in etcd, for every
    // manager. Every manager signs with the same domain key: made by the first, which etcd
    // publishes, imported by the others.
    let mut managers = vec![Manager::prepare(dir, "manager-1", &endpoint, None)];
    let first_data = managers[0].dir.display().to_string();
    let on_etcd = ["--etcd", &endpoint, "--etcd-prefix", PREFIX];
    let mut create = vec!["domain", "create", DOMAIN, "--data-dir", &first_data];
    let clients: Vec<String> = clients.iter().map(ToString::to_string).collect();
    for client in &clients {
        create.extend(["--allow", client]);
    }
    manager_ok(&[&create[..], &on_etcd[..]].concat());
    for node in &nodes {
        let node = node.to_string();
        manager_ok(&[&["node", "allow", &node][..], &on_etcd[..]].concat());
    }
    let admitted = manager_ok(&[&["node", "ls"][..], &on_etcd[..]].concat());
    assert_eq!(admitted.lines().count(), 2, "{admitted}");
    let key = dir.join("e2e.pem");
    std::fs::write(
        &key,
        manager_ok(&["domain", "export", DOMAIN, "--data-dir", &first_data]),
    )
    .unwrap();
    for name in ["manager-2", "manager-3"] {
        managers.push(Manager::prepare(dir, name, &endpoint, Some(&key)));
    }
    std::fs::remove_file(&key).unwrap();
    phase("managers prepared");
    // The first leads: it alone is started until it says so.
    managers[0].start();
    managers[0]
        .process
        .as_mut()
        .unwrap()
        .wait_ready(READY)
        .unwrap_or_else(|e| panic!("{e}"));
    managers[1].start();
    managers[2].start();
    let all: Vec<String> = managers.iter().map(|m| m.addr.to_string()).collect();
    let all = all.join(",");

    let mut node_processes = Vec::new();
    for (i, data) in node_dirs.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let data = data.display().to_string();
        let args = [
            "run",
            "--manager",
            &all,
            "--data-dir",
            &data,
            "--name",
            &name,
            "--join-interval",
            "1s",
        ];
        let mut node = Process::spawn(
            &name,
            &binary("domain-node"),
            args,
            &dir.join(format!("{name}.log")),
        )
        .unwrap();
        node.wait_ready(READY).unwrap_or_else(|e| panic!("{e}"));
        node_processes.push(node);
    }

    phase("nodes joined");
    // An upload of several large files, one job, cut by the leader's death.
    let files: Vec<PathBuf> = (0..FILES)
        .map(|i| {
            let file = dir.join(format!("scan-{i}.bin"));
            std::fs::write(&file, content(FILE_BYTES + i * 7, i as u8)).unwrap();
            file
        })
        .collect();
    let upload = {
        let identity = client_dir.join("identity.key").display().to_string();
        let mut args: Vec<String> = [
            "upload",
            "--domain",
            DOMAIN,
            "--manager",
            &all,
            "--identity",
            &identity,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(files.iter().map(|f| f.display().to_string()));
        std::thread::spawn(move || run("domain upload", &binary("domain"), &args, COMMAND).unwrap())
    };
    let watcher = runtime
        .block_on(Client::start(
            watcher,
            managers.iter().map(|m| m.addr.clone()),
            ClientConfig::default(),
        ))
        .unwrap();
    let job_id = runtime.block_on(wait_for_processing(&watcher));
    managers[0].kill();
    let killed = Instant::now();
    phase("leader killed");

    let uploaded = upload.join().unwrap();
    assert!(
        uploaded.status.success(),
        "the upload failed across the failover ({}):\n{}\nmanagers:\n{}\n{}",
        uploaded.status,
        uploaded.stderr,
        managers[1].log(),
        managers[2].log()
    );
    let lines = item_lines(&uploaded.stdout);
    assert_eq!(lines.len(), FILES, "{}", uploaded.stdout);
    // The job the leader started ends DONE on the one that took over: no task lost.
    runtime.block_on(wait_for_done(&watcher, &job_id));
    eprintln!(
        "the upload's job ended {} ms after the kill",
        killed.elapsed().as_millis()
    );
    let mut expected: Vec<(String, String, PathBuf)> = lines
        .iter()
        .zip(&files)
        .map(|(line, file)| (line.id.clone(), line.root.clone(), file.clone()))
        .collect();
    for (_, root, file) in &expected {
        assert_eq!(
            *root,
            domain_merkle::root_of(&std::fs::read(file).unwrap()).to_string()
        );
    }
    phase("upload done");
    check_every_item(dir, &all, &expected);
    phase("listed and downloaded");

    // The killed manager comes back as a standby, as its supervisor would start it; then
    // etcd restarts under all three. They wait for it and carry on: nothing is lost.
    managers[0].start();
    etcd.kill();
    std::thread::sleep(Duration::from_millis(500));
    runtime.block_on(etcd.restart()).unwrap();
    let small = dir.join("after-etcd.bin");
    std::fs::write(&small, content(300_000, 9)).unwrap();
    let small_arg = small.display().to_string();
    phase("etcd restarted");
    let after = domain(
        dir,
        &["upload", &small_arg, "--domain", DOMAIN, "--manager", &all],
    );
    assert!(
        after.status.success(),
        "an upload after the etcd restart failed:\n{}",
        after.stderr
    );
    let line = item_lines(&after.stdout).remove(0);
    expected.push((line.id, line.root, small));
    phase("uploaded after the restart");
    check_every_item(dir, &all, &expected);
    phase("listed and downloaded again");

    runtime.block_on(watcher.shutdown()).unwrap();
    for node in &mut node_processes {
        node.terminate(Duration::from_secs(10));
    }
    for manager in &mut managers {
        manager.kill();
    }
}
