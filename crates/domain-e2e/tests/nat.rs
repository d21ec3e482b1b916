//! NAT traversal with the real binaries: two nodes and a client, each behind a NAT of its
//! own, and the manager reachable from all.
//!
//! ```text
//!                 namespace pub: bridge br0, 172.16.0.1 = the manager
//!        ┌─────────────────────────┼─────────────────────────┐
//!   router ra 172.16.0.11    router rb 172.16.0.12    router rc 172.16.0.13
//!   (masquerade out of wan, forward in only what is established)
//!   node A 10.1.0.2          node B 10.2.0.2          client C 10.3.0.2
//! ```
//!
//! The manager has a namespace of its own rather than an address in the root namespace:
//! nothing of the test then touches the machine's own interfaces, routes or firewall, and
//! removing the namespaces removes every interface and nftables table it made. Each router
//! is a namespace with forwarding on and an nftables ruleset as a home router has: source
//! NAT (masquerade) of what leaves its public side, and nothing in from there that is not
//! the answer to something that went out. The private ranges differ, so that no peer can
//! reach another's private address by accident.
//!
//! What it proves: the nodes join the manager through their NATs; the client uploads a file
//! through the manager's scheduling to whichever node the manager picks, reaching it first
//! over a `/p2p-circuit` connection through the manager's relay, which DCUtR then upgrades
//! to a direct connection through both NATs (QUIC, each side sending from the port its NAT
//! mapped for the manager); the upload's bytes go over that direct connection, and its root
//! is the one computed here; the download back matches; AutoNAT finds the manager public
//! and the nodes and the client private. Where network namespaces or nftables cannot be
//! used (not root, no `ip` or `nft`), the test says so in one line and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{COMMAND, READY, binary, content, item_lines};
use domain_e2e::{Process, run_command};
use domain_merkle::root_of;

/// The network namespaces the test made, deleted (with their interfaces and nftables
/// tables) when dropped, also when the test fails.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Runs `program` with `args`; its standard error when it fails or cannot start.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("`{program}` cannot run: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// One NATed site: its router's namespace and public address, its host's namespace and
/// private address.
struct Site {
    router: String,
    public: String,
    host: String,
    private: String,
}

/// The whole network of the module's drawing, for a test process `tag`.
struct Network {
    /// Held for its `Drop`, which removes everything.
    _namespaces: Namespaces,
    public: String,
    sites: Vec<Site>,
}

const MANAGER_IP: &str = "172.16.0.1";

/// The nftables ruleset of a router whose public side is `wan` and private side `lan`: a
/// home router's. Out: masquerade. In: forwarded only what answers something that went
/// out, and nothing new for the router itself. That last rule matters to hole punching:
/// a punch packet that comes before this side's own has gone out is refused before
/// conntrack confirms an entry for it; kept, that entry would hold the public port the
/// peer behind this router punches from, and Linux would masquerade its punch from
/// another port, which the other side does not expect. TCP is refused with a reset, so
/// that AutoNAT's dial-back fails at once instead of waiting out a lost SYN.
const ROUTER_RULES: &str = r#"
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
table ip filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new meta l4proto tcp reject with tcp reset
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        iifname "lan" oifname "wan" accept
        iifname "wan" oifname "lan" ct state established,related accept
    }
}
"#;

impl Network {
    /// Makes the namespaces, links, addresses, routes and rules; on any failure, what
    /// failed (what was made is removed).
    fn create(tag: &str, rules: &Path) -> Result<Self, String> {
        sh("nft", &["--version"])?;
        let mut namespaces = Namespaces { names: Vec::new() };
        let mut add = |name: String| -> Result<String, String> {
            sh("ip", &["netns", "add", &name])?;
            namespaces.names.push(name.clone());
            sh("ip", &["-n", &name, "link", "set", "lo", "up"])?;
            Ok(name)
        };
        let public = add(format!("{tag}-pub"))?;
        let mut sites = Vec::new();
        for (i, letter) in ["a", "b", "c"].iter().enumerate() {
            let n = i + 1;
            sites.push(Site {
                router: add(format!("{tag}-r{letter}"))?,
                public: format!("172.16.0.{}", 10 + n),
                host: add(format!("{tag}-{letter}"))?,
                private: format!("10.{n}.0.2"),
            });
        }
        let ip = |args: &[&str]| sh("ip", args);
        ip(&["-n", &public, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &public,
            "addr",
            "add",
            &format!("{MANAGER_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &public, "link", "set", "br0", "up"])?;
        for (i, site) in sites.iter().enumerate() {
            let port = format!("port{}", i + 1);
            let n = i + 1;
            // Each veth is made with its ends in their namespaces: no name is ever taken in
            // the root namespace.
            ip(&[
                "link",
                "add",
                "wan",
                "netns",
                &site.router,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &public,
            ])?;
            ip(&["-n", &public, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &site.router,
                "addr",
                "add",
                &format!("{}/24", site.public),
                "dev",
                "wan",
            ])?;
            ip(&["-n", &site.router, "link", "set", "wan", "up"])?;
            ip(&[
                "link",
                "add",
                "lan",
                "netns",
                &site.router,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &site.host,
            ])?;
            ip(&[
                "-n",
                &site.router,
                "addr",
                "add",
                &format!("10.{n}.0.1/24"),
                "dev",
                "lan",
            ])?;
            ip(&["-n", &site.router, "link", "set", "lan", "up"])?;
            ip(&[
                "-n",
                &site.host,
                "addr",
                "add",
                &format!("{}/24", site.private),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &site.host, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &site.host,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{n}.0.1"),
            ])?;
            let rules = rules.display().to_string();
            ip(&[
                "netns",
                "exec",
                &site.router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            ip(&["netns", "exec", &site.router, "nft", "-f", &rules])?;
        }
        Ok(Self {
            _namespaces: namespaces,
            public,
            sites,
        })
    }
}

/// `program args` run inside namespace `ns`, logging `domain_cluster` at debug as JSON.
fn in_ns(ns: &str, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).arg(program).args(args);
    command
        .env("RUST_LOG", "info,domain_cluster=debug,libp2p_dcutr=debug")
        .env("DOMAIN_LOG_FORMAT", "json");
    command
}

/// The JSON log lines of the file at `path`.
fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The seconds since midnight of a log line's `timestamp` (RFC 3339, UTC).
fn seconds(line: &serde_json::Value) -> f64 {
    let time = field(line, "timestamp")
        .split_once('T')
        .map_or("", |(_, time)| time.trim_end_matches('Z'));
    time.split(':')
        .map(|part| part.parse::<f64>().unwrap_or(0.0))
        .fold(0.0, |total, part| total * 60.0 + part)
}

fn field<'a>(line: &'a serde_json::Value, name: &str) -> &'a str {
    line[name].as_str().unwrap_or_default()
}

/// The first log line of `path` with `message` for which `also` holds, waiting up to
/// `limit` for it.
fn wait_for_log(
    path: &Path,
    message: &str,
    limit: Duration,
    also: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(line) = log_lines(path)
            .into_iter()
            .find(|line| field(line, "message") == message && also(line))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?} line in {} within {limit:?}; it ends with:\n{}",
            path.display(),
            domain_e2e::tail(path, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The samples of the Prometheus endpoint on `127.0.0.1:port` inside namespace `ns`,
/// fetched there with bash's `/dev/tcp`: a thread of the test cannot enter a namespace
/// for a while and come back, and curl may not be installed.
fn scrape_in(ns: &str, port: u16) -> Vec<(String, f64)> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The bytes a peer moved in `direction` (`Inbound`, `Outbound`), from
/// `libp2p_bandwidth_bytes_total{protocols, direction}`: over relayed connections (a
/// circuit's stack: `…/p2p-circuit…` when dialled, `/p2p` when accepted), and over direct
/// ones, the connection to the manager included, which carries the circuits' bytes too.
fn bytes_moved(scrape: &[(String, f64)], direction: &str) -> (f64, f64) {
    let direction = format!("direction=\"{direction}\"");
    let (mut direct, mut relayed) = (0.0, 0.0);
    for (series, value) in scrape {
        let Some(labels) = series.strip_prefix("libp2p_bandwidth_bytes_total{") else {
            continue;
        };
        if !labels.contains(&direction) {
            continue;
        }
        if labels.contains("p2p-circuit") || labels.contains("protocols=\"/p2p") {
            relayed += value;
        } else {
            direct += value;
        }
    }
    (direct, relayed)
}

/// The value of `series` in `scrape`, 0 when absent.
fn sample(scrape: &[(String, f64)], series: &str) -> f64 {
    scrape
        .iter()
        .find(|(name, _)| name == series)
        .map_or(0.0, |(_, value)| *value)
}

const METRICS_PORT: u16 = 9464;

#[test]
fn peers_behind_nats_transfer_over_a_hole_punched_connection_and_know_their_reachability() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rules = dir.join("router.nft");
    std::fs::write(&rules, ROUTER_RULES).unwrap();
    let tag = format!("dnat{}", std::process::id());
    let network = match Network::create(&tag, &rules) {
        Ok(network) => network,
        Err(reason) => {
            println!("skipped: cannot make network namespaces with NATs here ({reason})");
            return;
        }
    };
    // Declared after the network, so dropped before it: the processes end, then their
    // namespaces go.
    let mut processes: Vec<Process> = Vec::new();

    // The manager on the public segment, over TCP and QUIC.
    let manager_log = dir.join("manager.log");
    let manager_dir = dir.join("manager").display().to_string();
    let tcp = format!("/ip4/{MANAGER_IP}/tcp/4001");
    let quic = format!("/ip4/{MANAGER_IP}/udp/4001/quic-v1");
    let mut manager = Process::spawn_command(
        "domain-manager",
        in_ns(
            &network.public,
            &binary("domain-manager"),
            &[
                "run",
                "--data-dir",
                &manager_dir,
                "--listen",
                &tcp,
                "--listen",
                &quic,
                "--open",
                "--tick-interval",
                "200ms",
            ],
        ),
        &manager_log,
    )
    .unwrap();
    let ready = manager.wait_ready(READY).unwrap_or_else(|e| panic!("{e}"));
    processes.push(manager);
    let manager_id = ready.addr.rsplit_once("/p2p/").unwrap().1.to_owned();
    // Everyone reaches the manager over QUIC: the NAT mapping of that UDP port is the one
    // the hole punch goes through.
    let manager_addr = format!("{quic}/p2p/{manager_id}");

    // Nodes A and B, each behind its NAT, with their metrics on their namespace's loopback.
    let mut node_logs = Vec::new();
    let mut node_ids = Vec::new();
    for (site, name) in network.sites[..2].iter().zip(["node-a", "node-b"]) {
        let log = dir.join(format!("{name}.log"));
        let data = dir.join(name).display().to_string();
        let tcp = format!("/ip4/{}/tcp/4001", site.private);
        let quic = format!("/ip4/{}/udp/4001/quic-v1", site.private);
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        let mut node = Process::spawn_command(
            name,
            in_ns(
                &site.host,
                &binary("domain-node"),
                &[
                    "run",
                    "--manager",
                    &manager_addr,
                    "--data-dir",
                    &data,
                    "--name",
                    name,
                    "--join-interval",
                    "1s",
                    "--listen",
                    &tcp,
                    "--listen",
                    &quic,
                    "--metrics",
                    &metrics,
                ],
            ),
            &log,
        )
        .unwrap();
        let ready = node.wait_ready(READY).unwrap_or_else(|e| panic!("{e}"));
        node_ids.push(ready.addr.rsplit_once("/p2p/").unwrap().1.to_owned());
        processes.push(node);
        // Its relay slot on the manager: the only way in through its NAT.
        wait_for_log(
            &log,
            "relay reservation accepted",
            Duration::from_secs(30),
            |_| true,
        );
        node_logs.push(log);
    }

    // The client C behind the third NAT: a watch that stays connected (so that AutoNAT has
    // time to probe it) and an upload.
    let client = &network.sites[2];
    let identity = dir
        .join("client")
        .join("identity.key")
        .display()
        .to_string();
    // The watch is a peer of its own: two processes of one identity would be one peer to
    // the others, with two NAT mappings.
    let watcher = dir
        .join("watcher")
        .join("identity.key")
        .display()
        .to_string();
    let domain_as = |identity: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--domain",
            "nat",
            "--manager",
            &manager_addr,
            "--identity",
            identity,
        ]);
        in_ns(&client.host, &binary("domain"), &all)
    };
    let domain = |args: &[&str]| domain_as(&identity, args);
    let watch_log = dir.join("watch.log");
    processes.push(
        Process::spawn_command("domain watch", domain_as(&watcher, &["watch"]), &watch_log)
            .unwrap(),
    );

    let bytes = content(24 << 20, 7);
    let file = dir.join("scan.bin");
    std::fs::write(&file, &bytes).unwrap();
    let file_arg = file.display().to_string();
    let started = Instant::now();
    let upload = run_command("domain upload", domain(&["upload", &file_arg]), COMMAND).unwrap();
    let upload_time = started.elapsed();
    let upload_log = dir.join("upload.log");
    std::fs::write(&upload_log, &upload.stderr).unwrap();
    assert!(upload.status.success(), "upload failed:\n{}", upload.stderr);
    let item = item_lines(&upload.stdout).remove(0);
    assert_eq!(item.root, root_of(&bytes).to_string());

    // The node the manager picked: the one that stored the bytes for this client.
    let lines = log_lines(&upload_log);
    let client_id = lines
        .iter()
        .find_map(|line| line["local_peer_id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let stored = |line: &serde_json::Value| {
        field(line, "message") == "task stream done"
            && line["span"]["protocol"] == "/store/v1"
            && line["span"]["peer"] == client_id.as_str()
            && line["bytes"] == bytes.len()
    };
    let which = node_logs
        .iter()
        .position(|log| log_lines(log).iter().any(stored))
        .unwrap_or_else(|| panic!("no node stored the upload of {client_id}"));
    let node = node_ids[which].clone();
    let node_site = &network.sites[which];
    // Reached first through the relay, then directly at its NAT's public address.
    let established = |line: &serde_json::Value, relayed: bool| {
        field(line, "message") == "connection established"
            && field(line, "peer") == node
            && field(line, "addr").contains("/p2p-circuit") == relayed
    };
    let relayed = lines
        .iter()
        .find(|line| established(line, true))
        .unwrap_or_else(|| panic!("no relayed connection to {node}:\n{}", upload.stderr));
    let direct = lines
        .iter()
        .find(|line| established(line, false))
        .unwrap_or_else(|| panic!("no direct connection to {node}:\n{}", upload.stderr));
    assert!(
        field(direct, "addr").starts_with(&format!("/ip4/{}/udp/", node_site.public)),
        "{direct}"
    );
    // DCUtR made it: the side whose dial connected reports it.
    let punched = |line: &serde_json::Value, peer: &str| {
        field(line, "message") == "direct connection upgrade succeeded"
            && field(line, "peer") == peer
    };
    let upgraded = lines.iter().any(|line| punched(line, &node))
        || log_lines(&node_logs[which])
            .iter()
            .any(|line| punched(line, &client_id));
    assert!(upgraded, "DCUtR reported no success:\n{}", upload.stderr);
    println!(
        "client {} -> node {} (behind {}): relayed {}",
        client.private,
        node_site.private,
        node_site.public,
        field(relayed, "addr")
    );
    println!(
        "upgraded by DCUtR to {} {:.0} ms after the circuit; upload of {} bytes in {:?}",
        field(direct, "addr"),
        (seconds(direct) - seconds(relayed)) * 1000.0,
        bytes.len(),
        upload_time
    );

    // The node counts the bytes per transport stack: the upload came over the punched
    // connection, not through the circuit.
    let (direct_in, relayed_in) = bytes_moved(&scrape_in(&node_site.host, METRICS_PORT), "Inbound");
    println!(
        "node received {direct_in} bytes over direct connections, {relayed_in} through the relay"
    );
    assert!(direct_in >= bytes.len() as f64);
    assert!(relayed_in < f64::from(1 << 20));

    // The download back, the same way.
    let out = dir.join("out");
    let out_arg = out.display().to_string();
    let download = run_command(
        "domain download",
        domain(&["download", "--id", &item.id, "--out", &out_arg]),
        COMMAND,
    )
    .unwrap();
    assert!(
        download.status.success(),
        "download failed:\n{}",
        download.stderr
    );
    let downloaded = item_lines(&download.stdout).remove(0);
    assert_eq!(downloaded.root, item.root);
    assert_eq!(std::fs::read(&downloaded.path).unwrap(), bytes);
    let (direct_out, relayed_out) =
        bytes_moved(&scrape_in(&node_site.host, METRICS_PORT), "Outbound");
    println!(
        "download: node sent {direct_out} bytes over direct connections, {relayed_out} through the relay"
    );
    assert!(direct_out >= bytes.len() as f64);
    assert!(relayed_out < f64::from(1 << 20));

    // AutoNAT: the manager public, the nodes and the client private.
    let reachability = |path: &Path, expected: &str| {
        let line = wait_for_log(
            path,
            "reachability changed",
            Duration::from_secs(90),
            |line| field(line, "reachability") != "unknown",
        );
        assert_eq!(field(&line, "reachability"), expected, "{line}");
        line
    };
    let public = reachability(&manager_log, "public");
    println!("manager: public at {}", field(&public, "address"));
    for (log, name) in node_logs.iter().zip(["node A", "node B"]) {
        reachability(log, "private");
        println!("{name}: private");
    }
    reachability(&watch_log, "private");
    println!("client: private");

    let gauge = scrape_in(&node_site.host, METRICS_PORT);
    assert_eq!(
        sample(&gauge, "domain_cluster_reachability{status=\"private\"}"),
        1.0,
        "{gauge:?}"
    );
    drop(processes);
    drop(network);
}
