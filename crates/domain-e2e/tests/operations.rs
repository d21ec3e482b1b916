//! A manager and a node as an operator runs them, with `--metrics`: their `/healthz` and
//! `/readyz`, and `/metrics` scraped before and after an upload, a download and a refused
//! token, whose counters must have moved by exactly what was done; and the Grafana
//! dashboard of `deploy/`, whose every query must name a metric the binaries export.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    content, domain, domain_ok, issue_token, item_lines, start_manager_with, start_node_with,
};

/// `GET path` over HTTP/1.1: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The samples of a scrape: `name{labels}` to value.
type Scrape = BTreeMap<String, f64>;

fn scrape(addr: &str) -> Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(scrape: &Scrape, series: &str) -> f64 {
    scrape.get(series).copied().unwrap_or(0.0)
}

/// Scrapes `addr` until `done` holds of a scrape, for up to 20 s (counts a manager takes
/// at its next scheduling pass, a node after its next join).
fn scrape_until(addr: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scraped = scrape(addr);
        if done(&scraped) {
            return scraped;
        }
        assert!(Instant::now() < deadline, "{what}: {scraped:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_metrics(command: &mut std::process::Command) {
    command.args(["--metrics", "127.0.0.1:0"]);
}

/// The metric names the dashboard's queries use.
fn dashboard_metrics(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no query");
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("domain_") || word.starts_with("libp2p_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn collect_exprs(value: &serde_json::Value, exprs: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                exprs.push(expr.clone());
            }
            map.values().for_each(|v| collect_exprs(v, exprs));
        }
        serde_json::Value::Array(values) => values.iter().for_each(|v| collect_exprs(v, exprs)),
        _ => {}
    }
}

#[test]
fn metrics_move_by_what_was_done_and_health_answers_and_the_dashboard_names_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager_with(work, None, with_metrics);
    let (_node, node) = start_node_with(work, "node1", &manager.addr, with_metrics);
    let manager_metrics = manager.metrics.clone().expect("a `metrics` line");
    let node_metrics = node.metrics.clone().expect("a `metrics` line");
    for addr in [&manager_metrics, &node_metrics] {
        assert_eq!(get(addr, "/healthz").0, 200);
        assert_eq!(get(addr, "/readyz").0, 200, "ready once it leads or joined");
        assert_eq!(get(addr, "/nothing").0, 404);
    }

    let node_before = scrape_until(&node_metrics, "node registered", |_| true);
    let manager_before = scrape_until(&manager_metrics, "the node registered", |s| {
        value(s, "domain_manager_nodes") == 1.0
    });

    // An upload of N bytes through the manager, then its download.
    const N: usize = 300_000;
    let file = work.join("scan.bin");
    std::fs::write(&file, content(N, 5)).unwrap();
    let file_arg = file.display().to_string();
    let uploaded = item_lines(&domain_ok(
        work,
        &[
            "upload",
            &file_arg,
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
        ],
    ))
    .remove(0);
    let copies = work.join("copies").display().to_string();
    domain_ok(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--id",
            &uploaded.id,
            "--out",
            &copies,
            "--manager",
            &manager.addr,
        ],
    );
    // A /store/v1 token used for a download is refused for its endpoint.
    let client = domain_ok(work, &["id"]).trim().to_owned();
    let node_peer = node.addr.rsplit('/').next().unwrap();
    let issued = issue_token(work, &client, node_peer, "/store/v1");
    assert!(issued.status.success(), "{}", issued.stderr);
    let refused = domain(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--id",
            &uploaded.id,
            "--out",
            &copies,
            "--node",
            &node.addr,
            "--token",
            issued.stdout.trim(),
        ],
    );
    assert!(!refused.status.success());

    let node_after = scrape_until(&node_metrics, "the refusal counted", |s| {
        value(
            s,
            "domain_node_token_refusals_total{reason=\"wrong_endpoint\"}",
        ) >= 1.0
    });
    let moved = |series: &str| value(&node_after, series) - value(&node_before, series);
    assert_eq!(
        moved("domain_node_task_streams_total{protocol=\"/store/v1\",outcome=\"done\"}"),
        1.0
    );
    assert_eq!(
        moved("domain_node_task_stream_bytes_total{protocol=\"/store/v1\",direction=\"in\"}"),
        N as f64
    );
    assert_eq!(
        moved("domain_node_task_stream_bytes_total{protocol=\"/load/v1\",direction=\"out\"}"),
        N as f64,
        "the download sent the item once, the listing before it no content"
    );
    assert_eq!(
        moved("domain_node_task_streams_total{protocol=\"/load/v1\",outcome=\"refused\"}"),
        1.0
    );
    assert_eq!(
        moved("domain_node_token_refusals_total{reason=\"wrong_endpoint\"}"),
        1.0
    );
    assert_eq!(
        moved("domain_node_token_refusals_total{reason=\"expired\"}"),
        0.0
    );
    assert_eq!(moved("domain_datastore_put_seconds_count"), 1.0);
    assert_eq!(
        value(&node_after, "domain_datastore_items{domain=\"e2e\"}"),
        1.0
    );
    assert_eq!(
        value(&node_after, "domain_datastore_stored_bytes{domain=\"e2e\"}"),
        N as f64
    );
    assert_eq!(
        value(&node_after, "domain_node_task_stream_permits_used"),
        0.0
    );
    assert!(value(&node_after, "domain_node_task_stream_permits") >= 1.0);
    let transport_bytes: f64 = node_after
        .iter()
        .filter(|(series, _)| series.starts_with("libp2p_bandwidth_bytes_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        transport_bytes >= 2.0 * N as f64,
        "the swarm's bandwidth counts the item in and out: {transport_bytes}"
    );
    assert!(
        node_after
            .keys()
            .any(|series| series.starts_with("domain_build_info{")
                && series.contains("binary=\"domain-node\"")),
        "{node_after:#?}"
    );

    let manager_after = scrape_until(&manager_metrics, "the jobs finished", |s| {
        value(s, "domain_manager_jobs{state=\"done\"}")
            - value(&manager_before, "domain_manager_jobs{state=\"done\"}")
            >= 2.0
            && value(s, "domain_manager_holder_index_entries") >= 1.0
    });
    assert_eq!(
        value(&manager_after, "domain_manager_jobs{state=\"done\"}")
            - value(&manager_before, "domain_manager_jobs{state=\"done\"}"),
        2.0,
        "the upload's job and the download's"
    );
    assert_eq!(
        value(&manager_after, "domain_manager_jobs{state=\"running\"}"),
        0.0
    );
    assert_eq!(value(&manager_after, "domain_manager_nodes"), 1.0);
    assert!(
        value(
            &manager_after,
            "domain_cluster_connections{kind=\"direct\"}"
        ) >= 1.0,
        "the node's connection, at least"
    );
    assert!(
        value(
            &manager_after,
            "domain_manager_scheduler_tick_seconds_count"
        ) >= 1.0
    );

    // Every metric the dashboard shows is one the binaries export.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/domain-cluster.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let exported: Vec<&String> = node_after.keys().chain(manager_after.keys()).collect();
    for name in dashboard_metrics(&dashboard) {
        assert!(
            exported
                .iter()
                .any(|series| series.starts_with(name.as_str())),
            "the dashboard queries {name}, which no binary exports"
        );
    }
    // The samples, for the operator's documentation.
    for (series, value) in node_after.iter().chain(&manager_after) {
        if series.starts_with("domain_") {
            println!("{series} {value}");
        }
    }
}
