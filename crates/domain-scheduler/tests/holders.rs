//! The holder index: which nodes hold data of each domain, fed by finished `/store/v1`
//! tasks and by the nodes' own reports, stored with the scheduler's state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use domain_proto::discovery::{DomainHoldings, Holdings};
use domain_proto::task::Status;
use domain_scheduler::{Event, HoldersChange, RedbStore, Scheduler, SchedulerError};

fn open(dir: &Path, now: u64) -> Scheduler {
    let store = RedbStore::open(dir.join("scheduler.redb")).unwrap();
    Scheduler::open(config(), Box::new(store), issuer(dir), now).unwrap()
}

fn holdings(domains: &[(&str, u64)]) -> Holdings {
    Holdings {
        domains: domains
            .iter()
            .map(|&(domain_id, items)| DomainHoldings {
                domain_id: domain_id.into(),
                items,
                bytes: items * 100,
            })
            .collect(),
        gateway: None,
    }
}

fn holder_ids(s: &Scheduler, domain: &str) -> Vec<(String, bool)> {
    s.holders(domain)
        .into_iter()
        .map(|h| (h.node_id, h.registered))
        .collect()
}

#[test]
fn the_receiver_of_a_finished_store_task_holds_data_of_its_domain() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), 0);
    let mut events = s.subscribe();
    s.join(node("n1", &[(STORE, -1), (LOAD, -1)]), 0).unwrap();
    s.submit(job("upload", vec![task("up", STORE, &[])]), CLIENT, 1)
        .unwrap();
    let assigned = drain(&mut events)
        .iter()
        .find_map(Event::task_for_submitter)
        .unwrap();
    assert!(s.holders(DOMAIN).is_empty(), "nothing is held before DONE");
    s.take_holder_changes();
    s.report(&update(&assigned, Status::Done), "n1", 2).unwrap();
    assert_eq!(holder_ids(&s, DOMAIN), [("n1".to_owned(), true)]);
    assert_eq!(
        s.take_holder_changes(),
        [HoldersChange::Domain(DOMAIN.into())]
    );
}

#[test]
fn a_report_replaces_what_the_index_knew_of_the_node_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path(), 0);
        s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
        s.join(node("n2", &[(STORE, -1)]), 0).unwrap();
        s.report_holdings("n1", &holdings(&[("a", 2), ("b", 1)]), 1)
            .unwrap();
        s.report_holdings("n2", &holdings(&[("a", 5)]), 1).unwrap();
        // n1 deleted everything of b.
        s.report_holdings("n1", &holdings(&[("a", 3)]), 2).unwrap();
        assert_eq!(s.holder_entries(), 2);
    }
    let mut s = open(dir.path(), 10);
    // The most items first.
    assert_eq!(
        holder_ids(&s, "a"),
        [("n2".to_owned(), true), ("n1".to_owned(), true)]
    );
    let a = s.holders("a");
    assert_eq!((a[1].items, a[1].bytes, a[1].updated_at), (3, 300, 2));
    assert!(s.holders("b").is_empty());
    // A node dropped stays a holder, shown as not registered, after the registered ones.
    s.leave("n2", 11).unwrap();
    assert_eq!(
        holder_ids(&s, "a"),
        [("n1".to_owned(), true), ("n2".to_owned(), false)]
    );
}

#[test]
fn a_gateway_holds_every_domain() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), 0);
    s.join(node("gw", &[(LOAD, -1)]), 0).unwrap();
    let gateway = Holdings {
        domains: Vec::new(),
        gateway: Some(true),
    };
    s.report_holdings("gw", &gateway, 1).unwrap();
    assert_eq!(holder_ids(&s, "any"), [("gw".to_owned(), true)]);
    assert_eq!(s.holders("any")[0].gateway, Some(true));
}

#[test]
fn only_registered_nodes_report_and_a_bad_report_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), 0);
    assert!(matches!(
        s.report_holdings("stranger", &holdings(&[("a", 1)]), 1),
        Err(SchedulerError::UnknownNode { .. })
    ));
    s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    s.report_holdings("n1", &holdings(&[("a", 1)]), 1).unwrap();
    let twice = holdings(&[("b", 1), ("b", 2)]);
    assert!(matches!(
        s.report_holdings("n1", &twice, 2),
        Err(SchedulerError::Holdings(_))
    ));
    assert_eq!(holder_ids(&s, "a"), [("n1".to_owned(), true)]);
    assert!(s.holders("b").is_empty());
}
