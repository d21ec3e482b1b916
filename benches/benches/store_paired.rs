//! The `/store/v1` overhead bench in paired rounds: each round stores the same 128 MiB
//! through a, b, c and d of the `capabilities` bench one after the other (the order
//! rotating from round to round), and the ratios are taken within each round.
//!
//! Criterion measures a for seconds, then b for seconds; this machine's disk changes
//! speed on that scale, so a ratio of two criterion means carries that drift. Within a
//! round the four stores are a fraction of a second apart. The report gives, for each
//! function, its median time and the CPU the process spent per item, and for each ratio
//! to a its median, quartiles and range over the rounds.
//!
//! `cargo bench -p domain-benches --bench store_paired -- --rounds 40`
//! (20 rounds when not told; a name given as a filter, as to criterion, that matches
//! neither this bench nor one of its functions skips it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use domain_benches::store::{LEN, Path, Sender, StoreBench, StoreBenchError};

const NAME: &str = "store_paired";
const TARGET: f64 = 0.95;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{NAME}: {message}");
            return ExitCode::FAILURE;
        }
    };
    if !options.selected() {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(measure(options.rounds)) {
        Ok(rounds) => {
            print!("{}", report(options.rounds, &rounds));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{NAME}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The command line: `--rounds N`, filters, and the `--bench` cargo passes.
struct Options {
    rounds: usize,
    filters: Vec<String>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Self {
            rounds: 20,
            filters: Vec::new(),
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => {}
                "--rounds" => {
                    let value = args.next().ok_or("--rounds needs a number")?;
                    options.rounds = value
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("--rounds {value:?}: not a number of rounds"))?;
                }
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                filter => options.filters.push(filter.to_owned()),
            }
        }
        Ok(options)
    }

    fn selected(&self) -> bool {
        let names = || std::iter::once(NAME).chain(Path::ALL.map(Path::name));
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|filter| names().any(|name| name.contains(filter.as_str())))
    }
}

/// Time and process CPU of one store.
#[derive(Debug, Clone, Copy)]
struct Sample {
    took: Duration,
    cpu: Duration,
}

/// One round: a sample of every [`Path::ALL`], in that order.
type Round = [Sample; 4];

async fn measure(rounds: usize) -> Result<Vec<Round>, StoreBenchError> {
    let bench = StoreBench::open().await?;
    // One round to warm up: the first put creates the store's tables and the allocator's pools.
    let mut measured = Vec::with_capacity(rounds);
    for round in 0..=rounds {
        let mut samples = [Sample {
            took: Duration::ZERO,
            cpu: Duration::ZERO,
        }; 4];
        for turn in 0..Path::ALL.len() {
            // Rotated, so that no function always follows the same one.
            let index = (round + turn) % Path::ALL.len();
            let before = process_cpu();
            let took = bench.store_once(Path::ALL[index]).await?;
            samples[index] = Sample {
                took,
                cpu: process_cpu().saturating_sub(before),
            };
        }
        if round > 0 {
            measured.push(samples);
        }
    }
    Ok(measured)
}

/// CPU time (user and system) of this process on all its threads, from `/proc/self/stat`
/// (utime and stime are fields 14 and 15, in ticks of `USER_HZ`, 100 on every Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, fields)| {
            fields
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|field| field.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn report(count: usize, rounds: &[Round]) -> String {
    let mut out = String::new();
    let mib = (LEN >> 20) as f64;
    let _ = writeln!(
        out,
        "{NAME}: {mib} MiB per item, {count} rounds of a, b, c, d in turn (order rotated)"
    );
    let _ = writeln!(
        out,
        "{:<32} {:>10} {:>8} {:>13}",
        "function", "median ms", "MiB/s", "CPU ms/item"
    );
    for (index, path) in Path::ALL.iter().enumerate() {
        let times = sorted(rounds.iter().map(|round| ms(round[index].took)));
        let cpu: f64 = rounds.iter().map(|round| ms(round[index].cpu)).sum();
        let median = quantile(&times, 0.5);
        let _ = writeln!(
            out,
            "{:<32} {median:>10.1} {:>8.0} {:>13.0}",
            path.name(),
            mib / (median / 1e3),
            cpu / rounds.len() as f64,
        );
    }
    let _ = writeln!(
        out,
        "throughput ratios within each round: median [quartiles] (range)"
    );
    let index = |path: Path| Path::ALL.iter().position(|&p| p == path).unwrap_or(0);
    let ratio = |over: Path, base: Path| {
        // Throughput over throughput: the base's time over the other's.
        sorted(rounds.iter().map(|round| {
            ms(round[index(base)].took) / ms(round[index(over)].took).max(f64::MIN_POSITIVE)
        }))
    };
    let mut line = |label: String, ratios: &[f64]| {
        let _ = writeln!(
            out,
            "{label:<32} {:>5.3} [{:.3} {:.3}] ({:.3} .. {:.3})",
            quantile(ratios, 0.5),
            quantile(ratios, 0.25),
            quantile(ratios, 0.75),
            ratios.first().copied().unwrap_or(f64::NAN),
            ratios.last().copied().unwrap_or(f64::NAN),
        );
    };
    for path in &Path::ALL[1..] {
        line(format!("{} / a", path.name()), &ratio(*path, Path::Put));
    }
    let (reader, resumable) = (
        Path::StoreV1(Sender::Reader),
        Path::StoreV1(Sender::Resumable),
    );
    line(
        "d / c (the resume extension)".to_owned(),
        &ratio(resumable, reader),
    );
    let b = quantile(&ratio(Path::StoreV1(Sender::Bytes), Path::Put), 0.5);
    let verdict = if b >= TARGET { "met" } else { "not met" };
    let _ = writeln!(
        out,
        "target b / a >= {TARGET} (median of the rounds): {verdict}"
    );
    out
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values
}

/// The `q` quantile of `sorted`, interpolated between the two nearest values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let at = q.clamp(0.0, 1.0) * last as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (at - low as f64)
}
