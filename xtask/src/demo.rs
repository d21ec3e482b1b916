//! `cargo xtask demo`: a domain cluster on loopback, used the way a person would.
//!
//! Builds the three binaries, starts a manager and two nodes with their data in a
//! temporary folder (ports picked by the system, addresses read from their `ready`
//! lines), then with the `domain` command uploads a generated 64 MiB file and a small
//! folder, lists the domain, downloads everything back, and checks the copies byte for
//! byte and root for root (`domain hash` computes the roots of the originals). Prints what
//! it did with the throughput, and stops everything it started, also on Ctrl-C.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::{Output, binary, build_binaries};

use crate::peers::Peers;

/// Size of the generated file.
const BIG_FILE: usize = 64 << 20;
/// Limit of one `domain` command.
const COMMAND: Duration = Duration::from_secs(300);
/// The demo's domain.
const DOMAIN: &str = "demo";
/// The small folder: file names and sizes (empty, under a chunk, a chunk and a byte, more).
const FOLDER: [(&str, usize); 5] = [
    ("empty.txt", 0),
    ("pose.json", 312),
    ("anchor.bin", 7169),
    ("mesh.obj", 100_000),
    ("image.png", 1_500_000),
];

const MIB: f64 = (1 << 20) as f64;

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    build()?;
    let dir = tempfile::Builder::new()
        .prefix("domain-demo-")
        .tempdir()
        .context("creating the demo's temporary folder")?;
    let peers = Peers::new(dir.path().to_path_buf(), "demo")?;
    let result = demo(dir.path(), &peers);
    let stopped = peers.stop_all();
    if !stopped.is_empty() {
        say(&format!("stopped {}", stopped.join(", ")));
    }
    result
}

/// `cargo build` of the binaries the demo runs, in the profile of this xtask.
pub(crate) fn build() -> anyhow::Result<()> {
    say("building domain-manager, domain-node and domain");
    build_binaries(&["domain-manager", "domain-node", "domain-cli"])
        .context("building the binaries")
}

fn demo(dir: &Path, peers: &Peers) -> anyhow::Result<()> {
    let manager = start(
        peers,
        "manager",
        "domain-manager",
        &["run", "--data-dir", &path_arg(&dir.join("manager"))],
    )?;
    say(&format!("manager ready at {manager}"));
    for node in ["node1", "node2"] {
        let addr = start(
            peers,
            node,
            "domain-node",
            &[
                "run",
                "--manager",
                &manager,
                "--data-dir",
                &path_arg(&dir.join(node)),
                "--name",
                node,
            ],
        )?;
        say(&format!("{node} joined, listening at {addr}"));
    }

    let client = Client {
        identity: dir.join("client").join("identity.key"),
        manager: manager.clone(),
    };
    let big = dir.join("scan.bin");
    generate(&big, BIG_FILE)?;
    let folder = dir.join("site");
    std::fs::create_dir(&folder).context("creating the demo folder")?;
    let mut small = Vec::new();
    for (seed, (name, len)) in FOLDER.iter().enumerate() {
        let path = folder.join(name);
        generate_seeded(&path, *len, seed as u64 + 2)?;
        small.push(path);
    }

    let started = Instant::now();
    let mut uploaded = client.upload(std::slice::from_ref(&big))?;
    report_transfer("uploaded scan.bin", BIG_FILE as u64, started.elapsed());
    let started = Instant::now();
    uploaded.extend(client.upload(&small)?);
    let folder_bytes: usize = FOLDER.iter().map(|(_, len)| len).sum();
    report_transfer(
        &format!("uploaded the folder site/ ({} files)", small.len()),
        folder_bytes as u64,
        started.elapsed(),
    );

    let listing = client.domain(&["list", "--domain", DOMAIN])?;
    say(&format!(
        "listed domain {DOMAIN} on the node the manager picked: {} items",
        listing.lines().count()
    ));
    for line in listing.lines() {
        say(&format!("    {line}"));
    }

    let copies = dir.join("copies");
    let started = Instant::now();
    let downloaded = client.download(&uploaded, &copies)?;
    let total: u64 = (BIG_FILE + folder_bytes) as u64;
    report_transfer(
        &format!("downloaded {} items", downloaded.len()),
        total,
        started.elapsed(),
    );

    verify(&uploaded, &downloaded)?;
    say(&format!(
        "checked {} items: the copies match the originals byte for byte and root for root",
        uploaded.len()
    ));
    Ok(())
}

/// One `<id>  <root>  <path>` line of `domain upload` or `download`.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    root: String,
    path: PathBuf,
}

fn parse_items(stdout: &str) -> anyhow::Result<Vec<Item>> {
    stdout
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, "  ");
            match (fields.next(), fields.next(), fields.next()) {
                (Some(id), Some(root), Some(path)) => Ok(Item {
                    id: id.to_owned(),
                    root: root.to_owned(),
                    path: PathBuf::from(path),
                }),
                _ => bail!("unexpected output line of domain: {line:?}"),
            }
        })
        .collect()
}

/// The `domain` command with the demo's identity and manager.
struct Client {
    identity: PathBuf,
    manager: String,
}

impl Client {
    /// Runs `domain` with `args`, then `--manager` and `--identity`; its standard output.
    fn domain(&self, args: &[&str]) -> anyhow::Result<String> {
        let identity = path_arg(&self.identity);
        let mut all = args.to_vec();
        all.extend(["--manager", &self.manager, "--identity", &identity]);
        let output = domain(&all)?;
        Ok(output.stdout)
    }

    fn upload(&self, files: &[PathBuf]) -> anyhow::Result<Vec<Item>> {
        let files: Vec<String> = files.iter().map(|f| path_arg(f)).collect();
        let mut args = vec!["upload"];
        args.extend(files.iter().map(String::as_str));
        args.extend(["--domain", DOMAIN]);
        let items = parse_items(&self.domain(&args)?)?;
        ensure!(
            items.len() == files.len(),
            "domain upload printed {} lines for {} files",
            items.len(),
            files.len()
        );
        Ok(items)
    }

    fn download(&self, items: &[Item], out: &Path) -> anyhow::Result<Vec<Item>> {
        let out = path_arg(out);
        let mut args = vec!["download", "--domain", DOMAIN, "--out", &out];
        for item in items {
            args.extend(["--id", &item.id]);
        }
        parse_items(&self.domain(&args)?)
    }
}

/// Runs `domain` to its end; fails with its standard error when it fails.
fn domain(args: &[&str]) -> anyhow::Result<Output> {
    let program = binary("domain").context("locating the domain binary")?;
    let output = domain_e2e::run("domain", &program, args, COMMAND)?;
    ensure!(
        output.status.success(),
        "domain {} failed ({}): {}",
        args.first().copied().unwrap_or_default(),
        output.status,
        output.stderr.trim()
    );
    Ok(output)
}

/// Each upload has a download with the same root, whose file holds the same bytes as the
/// original, and the root `domain hash` computes for the original.
fn verify(uploaded: &[Item], downloaded: &[Item]) -> anyhow::Result<()> {
    for original in uploaded {
        let copy = downloaded
            .iter()
            .find(|d| d.id == original.id)
            .with_context(|| format!("item {} was not downloaded", original.id))?;
        let hashed = domain(&["hash", &path_arg(&original.path)])?;
        let local_root = hashed.stdout.split_whitespace().next().unwrap_or_default();
        ensure!(
            copy.root == original.root && original.root == local_root,
            "roots differ for {}: uploaded {}, downloaded {}, computed here {local_root}",
            original.path.display(),
            original.root,
            copy.root
        );
        ensure!(
            same_bytes(&original.path, &copy.path)?,
            "{} and its copy {} differ",
            original.path.display(),
            copy.path.display()
        );
    }
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let open = |p: &Path| {
        File::open(p)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("opening {}", p.display()))
    };
    let (mut a_file, mut b_file) = (open(a)?, open(b)?);
    let (mut a_buf, mut b_buf) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a_file, &mut a_buf)?;
        let m = read_full(&mut b_file, &mut b_buf)?;
        if n != m || a_buf[..n] != b_buf[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).context("reading a file")? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn generate(path: &Path, len: usize) -> anyhow::Result<()> {
    generate_seeded(path, len, 1)
}

/// Writes `len` pseudo-random bytes (xorshift64*, so that nothing compresses or
/// deduplicates by accident).
pub(crate) fn generate_seeded(path: &Path, len: usize, seed: u64) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut left = len;
    while left > 0 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let n = left.min(word.len());
        out.write_all(&word[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn report_transfer(what: &str, bytes: u64, took: Duration) {
    let mib = bytes as f64 / MIB;
    let secs = took.as_secs_f64().max(1e-9);
    say(&format!(
        "{what}: {mib:.1} MiB in {secs:.2} s, {:.0} MiB/s (including the client's start and its job)",
        mib / secs
    ));
}

fn say(line: &str) {
    println!("demo: {line}");
}

/// Starts the workspace binary `program` as the peer `name`; answers with its address.
fn start(peers: &Peers, name: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let program = binary(program).with_context(|| format!("locating {program}"))?;
    Ok(peers.start(name, &program, args)?.0.addr)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}
