//! The client side of /join/v1, /jobs/v1, /monitor/v1 and /public-key/v1,
//! against tiny servers written with the `accept` API.

use domain_cluster::config::Role;
use domain_cluster::{ClusterError, ClusterHandle};
use domain_proto::discovery::{Capability, JoinClusterRequest, JoinClusterResponse, Node};
use domain_proto::protocols::{JOBS_V1, JOIN_V1, MONITOR_ACK, MONITOR_V1, PUBLIC_KEY_V1, STORE_V1};
use domain_proto::task::{Code, Job, JobRequest, Status, SubmitJobResponse, Task, TaskRequest};
use domain_proto::{DEFAULT_MAX_FRAME, read_message, write_message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::common::{joined, manager, within};

/// A `/join/v1` server that records who joined and answers like the manager:
/// only a node whose id is the stream's remote peer is accepted.
fn serve_join(manager: &ClusterHandle) -> mpsc::Receiver<Node> {
    let (joined, joins) = mpsc::channel(8);
    let mut incoming = manager.accept(JOIN_V1).unwrap();
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let joined = joined.clone();
            tokio::spawn(async move {
                let request: JoinClusterRequest =
                    read_message(&mut stream, DEFAULT_MAX_FRAME).await.unwrap();
                if request.node.id == peer.to_string() {
                    write_message(&mut stream, &JoinClusterResponse::default())
                        .await
                        .unwrap();
                    joined.send(request.node).await.unwrap();
                }
                // A refused node sees its stream dropped, as posemesh does.
            });
        }
    });
    joins
}

fn task(name: &str, job_id: &str, token: &str) -> Task {
    Task {
        name: name.into(),
        receiver: Some("12D3KooWReceiver".into()),
        endpoint: STORE_V1.into(),
        access_token: Some(token.into()),
        job_id: job_id.into(),
        sender: "12D3KooWSender".into(),
        status: Status::Pending as i32,
        output: None,
    }
}

/// A `/jobs/v1` server: refuses a job without tasks, otherwise accepts it as
/// `job-<name>` and streams one PENDING task per requested task, then closes.
fn serve_jobs(manager: &ClusterHandle) {
    let mut incoming = manager.accept(JOBS_V1).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let request: JobRequest =
                    read_message(&mut stream, DEFAULT_MAX_FRAME).await.unwrap();
                if request.tasks.is_empty() {
                    let refusal = SubmitJobResponse {
                        code: Code::BadRequest as i32,
                        job_id: String::new(),
                        err_msg: "a job needs at least one task".into(),
                    };
                    write_message(&mut stream, &refusal).await.unwrap();
                    return;
                }
                let job_id = format!("job-{}", request.name);
                let accepted = SubmitJobResponse {
                    code: Code::Accepted as i32,
                    job_id: job_id.clone(),
                    err_msg: String::new(),
                };
                write_message(&mut stream, &accepted).await.unwrap();
                for t in &request.tasks {
                    write_message(
                        &mut stream,
                        &task(&t.name, &job_id, &format!("token-{}", t.name)),
                    )
                    .await
                    .unwrap();
                }
                stream.shutdown().await.unwrap();
            });
        }
    });
}

fn job_request(name: &str, task_names: &[&str]) -> JobRequest {
    JobRequest {
        name: name.into(),
        tasks: task_names
            .iter()
            .map(|n| TaskRequest {
                name: (*n).into(),
                timeout: "30s".into(),
                ..TaskRequest::default()
            })
            .collect(),
        nonce: "nonce-1".into(),
        domain_id: "domain-1".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_the_manager_with_its_capabilities() {
    let manager = manager().await;
    let mut joins = serve_join(&manager.handle);
    let node = joined(Role::Node, &manager).await;
    let me = Node {
        id: node.handle.local_peer_id().to_string(),
        capabilities: vec![Capability {
            endpoint: STORE_V1.into(),
            capacity: -1,
        }],
        name: "node-1".into(),
        ..Node::default()
    };
    within(
        "join",
        node.handle.join(
            manager.handle.local_peer_id(),
            JoinClusterRequest {
                node: me.clone(),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(within("the manager's record", joins.recv()).await, Some(me));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_manager_refuses_fails_instead_of_hanging() {
    let manager = manager().await;
    let _joins = serve_join(&manager.handle);
    let node = joined(Role::Node, &manager).await;
    let impostor = Node {
        id: "12D3KooWSomeoneElse".into(),
        name: "x".into(),
        ..Node::default()
    };
    let err = within(
        "join",
        node.handle.join(
            manager.handle.local_peer_id(),
            JoinClusterRequest {
                node: impostor,
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::Frame {
                protocol: JOIN_V1,
                ..
            }
        ),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_yields_its_id_then_each_task_with_its_token() {
    let manager = manager().await;
    serve_jobs(&manager.handle);
    let client = joined(Role::Client, &manager).await;

    let mut job = within(
        "submit",
        client.handle.submit_job(
            manager.handle.local_peer_id(),
            job_request("scan", &["store", "load"]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(job.job_id, "job-scan");
    assert_eq!(job.tasks.peer(), manager.handle.local_peer_id());
    let mut tasks = Vec::new();
    while let Some(task) = within("next task", job.tasks.next()).await.unwrap() {
        tasks.push(task);
    }
    assert_eq!(
        tasks,
        vec![
            task("store", "job-scan", "token-store"),
            task("load", "job-scan", "token-load")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_manager_refuses_is_an_error_with_its_reason() {
    let manager = manager().await;
    serve_jobs(&manager.handle);
    let client = joined(Role::Client, &manager).await;
    let err = within(
        "submit",
        client
            .handle
            .submit_job(manager.handle.local_peer_id(), job_request("empty", &[])),
    )
    .await
    .unwrap_err();
    match err {
        ClusterError::JobRejected { name, message } => {
            assert_eq!(name, "empty");
            assert_eq!(message, "a job needs at least one task");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_sends_ack_then_streams_jobs() {
    let manager = manager().await;
    let mut incoming = manager.handle.accept(MONITOR_V1).unwrap();
    let jobs = vec![
        Job {
            id: "j1".into(),
            name: "first".into(),
            tasks: vec![],
        },
        Job {
            id: "j2".into(),
            name: "second".into(),
            tasks: vec![task("t", "j2", "x")],
        },
    ];
    let served = jobs.clone();
    tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.unwrap();
        let mut ack = [0u8; 3];
        stream.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, MONITOR_ACK);
        for job in &served {
            write_message(&mut stream, job).await.unwrap();
        }
        stream.shutdown().await.unwrap();
    });

    let client = joined(Role::Client, &manager).await;
    let mut monitor = within(
        "monitor",
        client.handle.monitor(manager.handle.local_peer_id()),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    while let Some(job) = within("next job", monitor.next()).await.unwrap() {
        seen.push(job);
    }
    assert_eq!(seen, jobs);
}

/// A `/public-key/v1` server: reads the domain id to the end of the request,
/// answers with `answer(domain id)`.
fn serve_public_key(peer: &ClusterHandle, answer: fn(&str) -> Vec<u8>) {
    let mut incoming = peer.accept(PUBLIC_KEY_V1).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut domain = Vec::new();
                (&mut stream)
                    .take(257)
                    .read_to_end(&mut domain)
                    .await
                    .unwrap();
                stream
                    .write_all(&answer(std::str::from_utf8(&domain).unwrap()))
                    .await
                    .unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
}

fn key_of(domain: &str) -> [u8; 32] {
    *blake3::hash(domain.as_bytes()).as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_sends_the_domain_id_and_reads_the_32_byte_key() {
    let manager = manager().await;
    serve_public_key(&manager.handle, |domain| key_of(domain).to_vec());
    let client = joined(Role::Client, &manager).await;
    let key = within(
        "public key",
        client
            .handle
            .public_key(manager.handle.local_peer_id(), "domain-7"),
    )
    .await
    .unwrap();
    assert_eq!(key, key_of("domain-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_public_key_answer_is_an_io_error() {
    let manager = manager().await;
    serve_public_key(&manager.handle, |_| vec![1; 31]);
    let client = joined(Role::Client, &manager).await;
    let err = within(
        "public key",
        client
            .handle
            .public_key(manager.handle.local_peer_id(), "d"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClusterError::StreamIo { protocol: PUBLIC_KEY_V1, source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_id_over_256_bytes_is_refused_before_anything_is_sent() {
    let manager = manager().await;
    let client = joined(Role::Client, &manager).await;
    let long = "d".repeat(257);
    let err = client
        .handle
        .public_key(manager.handle.local_peer_id(), &long)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::InvalidDomainId(domain_proto::InvalidDomainId::TooLong {
                len: 257,
                max: 256
            })
        ),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_frame_over_the_limit_is_a_typed_error_before_any_allocation() {
    let manager = manager().await;
    let mut incoming = manager.handle.accept(MONITOR_V1).unwrap();
    tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.unwrap();
        let mut ack = [0u8; 3];
        stream.read_exact(&mut ack).await.unwrap();
        // A 4-byte prefix announcing 1 GiB, then nothing.
        stream.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        // Held open: the client must refuse on the prefix alone.
        std::future::pending::<()>().await;
    });

    let client = joined(Role::Client, &manager).await;
    let mut monitor = within(
        "monitor",
        client.handle.monitor(manager.handle.local_peer_id()),
    )
    .await
    .unwrap();
    let err = within("next job", monitor.next()).await.unwrap_err();
    match err {
        ClusterError::Frame {
            protocol, source, ..
        } => {
            assert_eq!(protocol, MONITOR_V1);
            assert!(
                matches!(*source, domain_proto::FrameError::TooLarge { len, .. } if len == 1 << 30)
            );
        }
        other => panic!("unexpected error: {other}"),
    }
}
