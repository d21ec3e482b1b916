//! `cargo xtask bench`: runs the Merkle benches and prints each one as a throughput and as
//! ratios to BLAKE3's own limits.
//!
//! Criterion prints times; what matters for the Merkle core is how close each path comes to
//! `b_blake3_per_leaf` (what any sequential tree of 7168-byte leaves pays) and to
//! `a_blake3_one_shot` (BLAKE3 over the same bytes in one piece). This reads criterion's
//! `new/estimates.json` (the mean) and `new/benchmark.json` (the bytes per iteration) under
//! `<target>/criterion/merkle/` after the run and prints the table, then checks the targets.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The criterion group of `crates/domain-merkle/benches/merkle.rs`.
const GROUP: &str = "merkle";
/// The ceiling: `blake3::hash` over the whole buffer.
const ONE_SHOT: &str = "a_blake3_one_shot";
/// The per-leaf limit: `blake3::hash` over each 7168-byte leaf.
const PER_LEAF: &str = "b_blake3_per_leaf";
/// The builder fed in writes large enough to hash where they lie, without a copy.
const BEST_WRITES: &str = "c_builder_writes_1MiB";
/// The copy of the data in 7 KiB writes into a batch-sized buffer: what gathering costs.
const COPY: &str = "a_copy_in_7KiB_writes";
/// Targets as (bench, minimum throughput, the bench it is a multiple of). The builder on
/// one thread must come near one-shot BLAKE3 whatever its write size; the parallel paths
/// must use the second core.
const TARGETS: &[(&str, f64, &str)] = &[
    ("c_builder_writes_7KiB", 0.9, ONE_SHOT),
    ("c_builder_writes_64KiB", 0.9, ONE_SHOT),
    ("c_builder_writes_1MiB", 0.9, ONE_SHOT),
    ("d_parallel_root_of", 1.8, PER_LEAF),
    ("d_parallel_writes_1MiB", 1.8, PER_LEAF),
];

/// One bench's result as criterion stored it.
struct Measured {
    /// The bench's name within the group, e.g. `c_builder_writes_64KiB`.
    name: String,
    /// Mean time of one iteration, in nanoseconds.
    mean_ns: f64,
    /// Bytes one iteration processes.
    bytes: u64,
    /// Whether this run wrote the result (a criterion filter may have skipped the bench).
    fresh: bool,
}

impl Measured {
    /// Bytes per second.
    fn throughput(&self) -> f64 {
        self.bytes as f64 / (self.mean_ns * 1e-9)
    }
}

/// Runs `cargo bench -p domain-merkle --bench merkle -- <criterion_args>` from the
/// workspace root, then prints every result of the group as throughput and as ratios to
/// `a_blake3_one_shot` and `b_blake3_per_leaf`.
///
/// `criterion_args` go to criterion unchanged: a filter such as `d_parallel` runs only the
/// matching benches, and the others are shown from their previous run, marked as such.
pub fn run(criterion_args: &[String]) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let started = SystemTime::now();

    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["bench", "-p", "domain-merkle", "--bench", GROUP, "--"])
        .args(criterion_args)
        .status()
        .with_context(|| format!("running {} bench", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }

    let group_dir = criterion_home(&cargo, &root)?.join(GROUP);
    let results = read_results(&group_dir, started)?;
    print!("{}", report(&results));
    Ok(())
}

/// Where criterion writes: `$CRITERION_HOME`, else `<cargo target directory>/criterion`.
fn criterion_home(cargo: &OsString, root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Ok(PathBuf::from(home));
    }
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata's output")?;
    let target = metadata
        .get("target_directory")
        .and_then(Value::as_str)
        .context("cargo metadata names no target_directory")?;
    Ok(Path::new(target).join("criterion"))
}

/// Every result under `group_dir`, by name; `fresh` when written after `started`.
fn read_results(group_dir: &Path, started: SystemTime) -> anyhow::Result<Vec<Measured>> {
    let mut new_dirs = Vec::new();
    find_new_dirs(group_dir, &mut new_dirs)
        .with_context(|| format!("listing criterion results in {}", group_dir.display()))?;
    let mut results = Vec::with_capacity(new_dirs.len());
    for dir in new_dirs {
        results.push(read_result(&dir, started)?);
    }
    if results.is_empty() {
        bail!("no criterion results under {}", group_dir.display());
    }
    results.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(results)
}

/// Collects the `new` folders (criterion's latest result of a bench) below `dir`.
fn find_new_dirs(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == "new" {
            found.push(path);
        } else if entry.file_name() != "base" && entry.file_name() != "report" {
            find_new_dirs(&path, found)?;
        }
    }
    Ok(())
}

/// Reads one bench's `estimates.json` and `benchmark.json` from its `new` folder.
fn read_result(new_dir: &Path, started: SystemTime) -> anyhow::Result<Measured> {
    let estimates_path = new_dir.join("estimates.json");
    let benchmark_path = new_dir.join("benchmark.json");
    let estimates = read_json(&estimates_path)?;
    let benchmark = read_json(&benchmark_path)?;

    let mean_ns = estimates
        .pointer("/mean/point_estimate")
        .and_then(Value::as_f64)
        .filter(|mean| *mean > 0.0)
        .with_context(|| format!("{}: no positive mean", estimates_path.display()))?;
    let bytes = benchmark
        .pointer("/throughput/Bytes")
        .or_else(|| benchmark.pointer("/throughput/BytesDecimal"))
        .and_then(Value::as_u64)
        .with_context(|| format!("{}: no throughput in bytes", benchmark_path.display()))?;
    let name = benchmark
        .get("function_id")
        .and_then(Value::as_str)
        .or_else(|| benchmark.get("full_id").and_then(Value::as_str))
        .with_context(|| format!("{}: no bench name", benchmark_path.display()))?
        .to_owned();
    let fresh = std::fs::metadata(&estimates_path)
        .and_then(|meta| meta.modified())
        .is_ok_and(|modified| modified >= started);
    Ok(Measured {
        name,
        mean_ns,
        bytes,
        fresh,
    })
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The table of results and the target checks, as printed.
fn report(results: &[Measured]) -> String {
    let find = |name: &str| results.iter().find(|result| result.name == name);
    let one_shot = find(ONE_SHOT).map(Measured::throughput);
    let per_leaf = find(PER_LEAF).map(Measured::throughput);
    let ratio = |value: f64, base: Option<f64>| match base {
        Some(base) => format!("{:.2}", value / base),
        None => "-".to_owned(),
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<26} {:>10} {:>12} {:>7} {:>7}",
        "bench", "mean", "throughput", "x a", "x b"
    );
    for result in results {
        let throughput = result.throughput();
        let _ = writeln!(
            out,
            "{:<26} {:>7.2} ms {:>6.0} MiB/s {:>7} {:>7}{}",
            result.name,
            result.mean_ns / 1e6,
            throughput / f64::from(1 << 20),
            ratio(throughput, one_shot),
            ratio(throughput, per_leaf),
            if result.fresh { "" } else { "  (previous run)" },
        );
    }
    let _ = writeln!(out);
    // Small writes are gathered by a copy before they are hashed: their ceiling is the
    // builder's best (1 MiB writes, no copy) and the copy, one after the other.
    if let (Some(one_shot), Some(best), Some(copy)) = (
        one_shot,
        find(BEST_WRITES).map(Measured::throughput),
        find(COPY).map(Measured::throughput),
    ) {
        let limit = 1.0 / (1.0 / best + 1.0 / copy);
        let _ = writeln!(
            out,
            "limit of gathered writes ({BEST_WRITES} then {COPY}): {:.0} MiB/s, {:.2} x a",
            limit / f64::from(1 << 20),
            limit / one_shot
        );
        for name in ["c_builder_writes_7KiB", "c_builder_writes_64KiB"] {
            if let Some(result) = find(name) {
                let _ = writeln!(
                    out,
                    "{name}: {:.2} x that limit",
                    result.throughput() / limit
                );
            }
        }
    }
    for &(name, minimum, base) in TARGETS {
        let (Some(result), Some(base_result)) = (find(name), find(base)) else {
            continue;
        };
        let letter = if base == ONE_SHOT { "a" } else { "b" };
        let achieved = result.throughput() / base_result.throughput();
        let verdict = if achieved >= minimum { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "target {name} >= {minimum:.2} x {letter}: {achieved:.2} x {letter}, {verdict}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, mean_ms: f64, fresh: bool) -> Measured {
        Measured {
            name: name.to_owned(),
            mean_ns: mean_ms * 1e6,
            bytes: 64 << 20,
            fresh,
        }
    }

    #[test]
    fn report_gives_ratios_to_one_shot_and_per_leaf_and_checks_targets() {
        let results = [
            measured(ONE_SHOT, 10.0, true),
            measured(PER_LEAF, 20.0, true),
            measured("c_builder_writes_64KiB", 25.0, true),
            measured("d_parallel_root_of", 10.0, false),
        ];
        let table = report(&results);
        assert!(table.contains("6400 MiB/s"), "{table}");
        assert!(table.contains("0.40    0.80"), "{table}");
        assert!(table.contains("1.00    2.00  (previous run)"), "{table}");
        assert!(
            table.contains("c_builder_writes_64KiB >= 0.90 x a: 0.40 x a, MISSED"),
            "{table}"
        );
        assert!(
            table.contains("d_parallel_root_of >= 1.80 x b: 2.00 x b, met"),
            "{table}"
        );
    }

    #[test]
    fn results_are_read_from_criterion_files() {
        let dir = tempfile::tempdir().unwrap();
        let new_dir = dir.path().join("b_blake3_per_leaf").join("new");
        std::fs::create_dir_all(&new_dir).unwrap();
        std::fs::write(
            new_dir.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2000000.0,"standard_error":0.1}}"#,
        )
        .unwrap();
        std::fs::write(
            new_dir.join("benchmark.json"),
            r#"{"group_id":"merkle","function_id":"b_blake3_per_leaf","value_str":null,"throughput":{"Bytes":1048576},"full_id":"merkle/b_blake3_per_leaf","directory_name":"merkle/b_blake3_per_leaf","title":"merkle/b_blake3_per_leaf"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("report")).unwrap();

        let results = read_results(dir.path(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].name, PER_LEAF);
        assert_eq!(results[0].bytes, 1 << 20);
        assert!(results[0].fresh);
        assert!((results[0].throughput() - 524_288_000.0).abs() < 1.0);
    }
}
