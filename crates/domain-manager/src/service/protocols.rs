//! The manager's protocols, one function per protocol: each reads its request within
//! the first-request timeout, checks who asks, and answers (`serve_protocol` bounds the
//! streams of each protocol and of each peer).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use domain_auth::PublicKey;
use domain_capabilities::{Limits, PublicKeySource, serve_public_key};
use domain_cluster::{ClusterHandle, ClusterStream, IncomingStreams, PeerId};
use domain_proto::discovery::{
    HoldersRequest, HoldersResponse, JoinClusterRequest, JoinClusterResponse,
};
use domain_proto::protocols::{
    HOLDERS_V1, JOBS_V1, JOIN_V1, MAX_STATUS_FRAME, MAX_STATUS_REPORTS, MONITOR_ACK, MONITOR_V1,
    PUBLIC_KEY_V1, STATUS_NOT_APPLIED, TASK_STATUS_V1,
};
use domain_proto::task::{Code, Job, JobRequest, SubmitJobResponse, Task};
use domain_proto::{
    DEFAULT_MAX_FRAME, read_frame, read_message, read_message_or_eof, wire, write_message,
};
use domain_scheduler::{
    DomainKeyIssuer, HoldersChange, MAX_CAPABILITIES, MAX_REPORTED_DOMAINS, submit_response,
};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

use crate::domains::{DomainPolicy, Refusal};
use crate::scheduler_thread::{HoldersNow, JobView, Request, Submission, Watch};
use crate::{repair, replication};

use super::{
    MAX_HOLDERS_REQUEST, MAX_STRANGER_STREAMS, MAX_STRANGER_STREAMS_PER_PEER, MAX_STREAMS_PER_PEER,
    MAX_STREAMS_PER_PROTOCOL, MONITOR_FRAME_BUDGET, STRANGER_BAN, STRANGER_REFUSALS_BEFORE_BAN,
    Shared, ask,
};

/// How long a node's join may wait while the manager removes what clients deleted while it
/// was away (well within the node's own wait for its answer).
const PURGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `/task-status/v1`: see [`relay_reports`].
pub(super) async fn serve_status(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let timeouts = (shared.first_request_timeout(), shared.request_timeout);
    relay_reports(&shared.requests, &peer.to_string(), timeouts, stream).await;
}

/// Hands each `Task` frame of a `/task-status/v1` stream to the scheduler as a report of
/// `peer`, which it believes only from the task's sender or receiver; closes the stream
/// once all are applied and stored, so that a node whose manager dies before then reports
/// again. When they are not applied within `request` time, writes one byte
/// ([`STATUS_NOT_APPLIED`]) before closing. `first` bounds the wait for each frame.
async fn relay_reports<S: AsyncRead + AsyncWrite>(
    requests: &mpsc::Sender<Request>,
    peer: &str,
    (first, request): (std::time::Duration, std::time::Duration),
    stream: S,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    for _ in 0..MAX_STATUS_REPORTS {
        let next = tokio::time::timeout(
            first,
            read_message_or_eof::<Task, _>(&mut reader, MAX_STATUS_FRAME),
        )
        .await;
        let task = match next {
            Ok(Ok(Some(task))) => task,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad {TASK_STATUS_V1} report: {}", domain_proto::ErrorChain(&e));
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no {TASK_STATUS_V1} report in time");
                return;
            }
        };
        let report = Request::Report {
            task,
            reporter: peer.to_owned(),
        };
        if requests.send(report).await.is_err() {
            return;
        }
    }
    let (reply, applied) = oneshot::channel();
    let applied = async {
        requests.send(Request::Applied { reply }).await.ok()?;
        applied.await.ok()
    };
    let applied = tokio::time::timeout(request, applied)
        .await
        .ok()
        .flatten()
        .is_some();
    let answer = async {
        if !applied {
            tracing::debug!(%peer, "{TASK_STATUS_V1} reports not applied in time");
            writer.write_all(&[STATUS_NOT_APPLIED]).await?;
        }
        writer.shutdown().await
    };
    let _ = tokio::time::timeout(request, answer).await;
}

/// Accepts the streams of one protocol, each served by a task of its own. A peer the
/// manager knows (`known`: an admitted node, a peer on an allow-list) has a share of
/// [`MAX_STREAMS_PER_PEER`] among [`MAX_STREAMS_PER_PROTOCOL`]; a stranger (a node
/// presenting an invite, a peer asking a public key, anyone else) one of
/// [`MAX_STRANGER_STREAMS_PER_PEER`] among [`MAX_STRANGER_STREAMS`], where a new stream
/// ends the oldest when all are taken: many fresh identities together can neither take the
/// known peers' streams nor keep a newcomer out for long. Aborting it aborts every stream
/// it serves.
pub(super) async fn serve_protocol<F, Fut, K>(
    mut incoming: IncomingStreams,
    protocol: &'static str,
    known: K,
    cluster: ClusterHandle,
    serve: F,
) where
    F: Fn(PeerId, ClusterStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    K: Fn(&PeerId) -> bool,
{
    // Streams of each stranger dropped for being past its share: a peer that keeps
    // opening them is flooding, and is banned.
    let mut refused: HashMap<PeerId, u32> = HashMap::new();
    let mut running = JoinSet::new();
    let mut peer_of = HashMap::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    let mut known_running = 0_usize;
    // The strangers' streams, oldest first.
    let mut strangers: VecDeque<(tokio::task::Id, AbortHandle)> = VecDeque::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                let is_known = known(&peer);
                let held = per_peer.get(&peer).copied().unwrap_or(0);
                if is_known {
                    if known_running >= MAX_STREAMS_PER_PROTOCOL {
                        tracing::warn!(%peer, protocol, "too many streams; dropping one");
                        continue;
                    }
                    if held >= MAX_STREAMS_PER_PEER {
                        tracing::warn!(%peer, protocol, "too many streams from one peer; dropping one");
                        continue;
                    }
                } else {
                    if held >= MAX_STRANGER_STREAMS_PER_PEER {
                        tracing::debug!(%peer, protocol, "too many streams from one unknown peer; dropping one");
                        if refused.len() >= MAX_STRANGER_STREAMS * 32 {
                            refused.clear();
                        }
                        let count = refused.entry(peer).or_default();
                        *count += 1;
                        if *count == STRANGER_REFUSALS_BEFORE_BAN {
                            refused.remove(&peer);
                            tracing::warn!(%peer, protocol, ?STRANGER_BAN, "an unknown peer keeps opening streams past its share; banning it");
                            let cluster = cluster.clone();
                            tokio::spawn(async move { cluster.ban(peer, STRANGER_BAN).await });
                        }
                        continue;
                    }
                    if strangers.len() >= MAX_STRANGER_STREAMS {
                        if let Some((_, oldest)) = strangers.pop_front() {
                            tracing::debug!(protocol, "streams of unknown peers at their limit; ending the oldest");
                            oldest.abort();
                        }
                    }
                }
                *per_peer.entry(peer).or_default() += 1;
                let task = running.spawn(serve(peer, stream));
                peer_of.insert(task.id(), (peer, is_known));
                match is_known {
                    true => known_running += 1,
                    false => strangers.push_back((task.id(), task)),
                }
            }
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                let Some((peer, is_known)) = peer_of.remove(&id) else { continue };
                if let Some(held) = per_peer.get_mut(&peer) {
                    *held -= 1;
                    if *held == 0 {
                        per_peer.remove(&peer);
                    }
                }
                if is_known {
                    known_running -= 1;
                } else if let Some(at) = strangers.iter().position(|(task, _)| *task == id) {
                    strangers.remove(at);
                }
            }
        }
    }
}

/// `/join/v1`: registers the node (or counts its heartbeat) and answers; a node that claims
/// another peer's id, or that the registry refuses, loses its stream without an answer.
pub(super) async fn serve_join(shared: &Shared, peer: PeerId, mut stream: ClusterStream) {
    let frame = tokio::time::timeout(
        shared.first_request_timeout(),
        read_frame(&mut stream, DEFAULT_MAX_FRAME),
    )
    .await;
    let frame = match frame {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad {JOIN_V1} request: {}", domain_proto::ErrorChain(&e));
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no {JOIN_V1} request in time");
            return;
        }
    };
    // Too large to build: refused from its encoding, and the node hears why.
    if let Err(reason) = check_join_shape(frame.body()) {
        tracing::warn!(%peer, "refused a join: {reason}");
        let answer = JoinClusterResponse {
            replication: Default::default(),
            err_msg: Some(reason),
        };
        let _ =
            tokio::time::timeout(shared.request_timeout, write_message(&mut stream, &answer)).await;
        return;
    }
    let (node, holdings, invite, started) = match frame.decode::<JoinClusterRequest>() {
        Ok(request) => (
            request.node,
            request.holdings,
            request.invite,
            request.started == Some(true),
        ),
        Err(e) => {
            tracing::debug!(%peer, "bad {JOIN_V1} request: {}", domain_proto::ErrorChain(&e));
            return;
        }
    };
    if node.id != peer.to_string() {
        tracing::warn!(%peer, claimed = %node.id, "refused a join: the node id is not the peer's");
        return;
    }
    // Deletes recorded when a returning node was purged: one recorded after that, while it
    // registered, missed it (the client asked the holders before it was back).
    let mut purged = None;
    let answer = match shared.admission.check_join(&peer, invite.as_deref()).await {
        Ok(()) => {
            if let Some(held) = &holdings {
                // Back from away (or restarted): before clients can list it, it loses what
                // they deleted meanwhile.
                let registered = |reply| Request::Registered {
                    node: node.id.clone(),
                    reply,
                };
                let returning = started || ask(&shared.requests, registered).await != Some(true);
                if returning {
                    let domains: Vec<String> =
                        held.domains.iter().map(|d| d.domain_id.clone()).collect();
                    let before = shared.tombstones.recorded();
                    purge_returning(shared, &peer, domains.clone()).await;
                    purged = Some((before, domains));
                }
            }
            let join = |reply| Request::Join {
                node,
                holdings,
                started,
                reply,
            };
            match ask(&shared.requests, join).await {
                Some(Ok(())) => {
                    if let Some((before, domains)) = purged
                        && shared.tombstones.recorded() != before
                    {
                        purge_returning(shared, &peer, domains).await;
                    }
                    if started {
                        let _ = shared.started.try_send(peer.to_string());
                    }
                    JoinClusterResponse {
                        replication: shared.policy.replicated().clone().into_iter().collect(),
                        err_msg: None,
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(%peer, "refused a join: {}", domain_proto::ErrorChain(&e));
                    return;
                }
                None => return,
            }
        }
        Err(refusal) => {
            tracing::warn!(%peer, "refused a join: {}", domain_proto::ErrorChain(&refusal));
            // A node revoked since it registered leaves now, not at its timeout.
            let expel = Request::Expel {
                nodes: vec![peer.to_string()],
            };
            if shared.requests.send(expel).await.is_err() {
                return;
            }
            JoinClusterResponse {
                replication: Default::default(),
                err_msg: Some(domain_proto::ErrorChain(&refusal).to_string()),
            }
        }
    };
    let answered = tokio::time::timeout(shared.request_timeout, async {
        write_message(&mut stream, &answer).await?;
        stream
            .shutdown()
            .await
            .map_err(domain_proto::FrameError::from)
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::debug!(%peer, "could not answer a join");
    }
}

/// Answers a job request with BadRequest and `reason`, then closes the stream; a submitter
/// that cannot take the answer loses nothing it was owed.
async fn refuse_job<W: AsyncWrite + Unpin>(shared: &Shared, writer: &mut W, reason: String) {
    let response = SubmitJobResponse {
        code: Code::BadRequest as i32,
        job_id: String::new(),
        err_msg: reason,
    };
    let _ = send_frame(shared, writer, &response).await;
    let _ = writer.shutdown().await;
}

/// Dependencies (`needs`) one task of a job may name.
const MAX_NEEDS_PER_TASK: usize = 256;

/// Refuses, from its encoding, a `JobRequest` with more tasks than a job may hold or a task
/// with more dependencies than [`MAX_NEEDS_PER_TASK`], before any of it is built.
fn check_job_shape(body: &[u8], max_tasks: usize) -> Result<(), String> {
    let shape = wire::job_shape(body).map_err(|e| format!("bad job request: {e}"))?;
    if shape.most_needs > MAX_NEEDS_PER_TASK {
        return Err(format!(
            "a task of the job needs {} others; at most {MAX_NEEDS_PER_TASK}",
            shape.most_needs
        ));
    }
    if shape.tasks > max_tasks {
        return Err(format!(
            "the job holds {} tasks; a job holds at most {max_tasks}",
            shape.tasks
        ));
    }
    Ok(())
}

/// Refuses, from its encoding, a `JoinClusterRequest` advertising more capabilities than
/// the registry takes or reporting more domains than a report may hold.
fn check_join_shape(body: &[u8]) -> Result<(), String> {
    let shape = wire::join_shape(body).map_err(|e| format!("bad join request: {e}"))?;
    if shape.capabilities > MAX_CAPABILITIES {
        return Err(format!(
            "the node advertises {} capabilities; at most {MAX_CAPABILITIES}",
            shape.capabilities
        ));
    }
    if shape.domains > MAX_REPORTED_DOMAINS {
        return Err(format!(
            "the node reports {} domains; at most {MAX_REPORTED_DOMAINS}",
            shape.domains
        ));
    }
    Ok(())
}

/// `/jobs/v1`: checks the domain and the submitter, submits, answers, then writes each task
/// with its token as it becomes PENDING, until the job ends or the submitter goes away.
pub(super) async fn serve_jobs(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let frame = tokio::time::timeout(
        shared.first_request_timeout(),
        read_frame(&mut reader, DEFAULT_MAX_FRAME),
    )
    .await;
    let frame = match frame {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad {JOBS_V1} request: {}", domain_proto::ErrorChain(&e));
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no {JOBS_V1} request in time");
            return;
        }
    };
    // Counted on the wire first: decoding builds a struct per task, and an empty one is
    // two bytes.
    let request = check_job_shape(frame.body(), shared.max_tasks_per_job).and_then(|()| {
        frame
            .decode::<JobRequest>()
            .map_err(|e| domain_proto::ErrorChain(&e).to_string())
    });
    let request = match request {
        Ok(request) => request,
        Err(reason) => {
            tracing::warn!(%peer, "refused a job: {reason}");
            refuse_job(shared, &mut writer, reason).await;
            return;
        }
    };
    // A replicate job comes from a node, not from a client on the allow-list: the scheduler
    // checks that the node stored what it asks to copy.
    let allowed = match replication::is_replication(&request) {
        true if shared.policy.serves(&request.domain_id) => Ok(()),
        true => Err(Refusal::UnknownDomain {
            domain: request.domain_id.chars().take(80).collect(),
        }),
        // Replicate data marks the copies the manager places (their tokens let the sender
        // choose item ids): never on a job it did not expand itself.
        false
            if request.tasks.iter().any(|task| {
                task.data
                    .as_ref()
                    .is_some_and(|d| d.type_url == domain_proto::REPLICATE_INPUT)
            }) =>
        {
            Err(Refusal::CopyData)
        }
        false => shared.policy.check_submitter(&request.domain_id, &peer),
    };
    if let Err(refusal) = allowed {
        tracing::warn!(%peer, job = %request.name, "refused a job: {}", domain_proto::ErrorChain(&refusal));
        let reason = domain_proto::ErrorChain(&refusal).to_string();
        refuse_job(shared, &mut writer, reason).await;
        return;
    }
    // Room for every token the job can get (each task, each retry) and each task's FAILED
    // notice: the dispatcher never waits.
    let room = request
        .tasks
        .len()
        .saturating_mul(shared.tokens_per_task.saturating_add(1))
        .clamp(1, shared.max_tokens_per_job);
    let (tokens_tx, mut tokens) = mpsc::channel(room.max(1));
    let name = request.name.clone();
    let copies = shared.policy.replication(&request.domain_id);
    let deletes = repair::deleted_ids(&request);
    let domain = request.domain_id.clone();
    let submitted = ask(&shared.requests, |reply| Request::Submit {
        request,
        submitter: peer.to_string(),
        copies,
        tokens: tokens_tx,
        reply,
    })
    .await;
    let Some(result) = submitted else { return };
    let response = match &result {
        Ok(Submission { job_id, resumed }) => {
            tracing::info!(%peer, job = %job_id, name = %name, resumed, "job accepted");
            if let Some(ids) = deletes {
                shared.tombstones.record(&domain, ids);
            }
            submit_response(&Ok(job_id.clone()))
        }
        Err(e) => {
            tracing::warn!(%peer, job = %name, "refused a job: {}", domain_proto::ErrorChain(e));
            SubmitJobResponse {
                code: Code::BadRequest as i32,
                job_id: String::new(),
                err_msg: domain_proto::ErrorChain(e).to_string(),
            }
        }
    };
    if send_frame(shared, &mut writer, &response).await.is_err() || result.is_err() {
        let _ = writer.shutdown().await;
        return;
    }
    let mut probe = [0u8; 1];
    let left = loop {
        tokio::select! {
            task = tokens.recv() => {
                // No more tokens: the job ended.
                let Some(task) = task else { break false };
                if send_frame(shared, &mut writer, &task).await.is_err() {
                    break true;
                }
            }
            // The submitter writes nothing more: any byte, its close or an error ends the stream.
            _ = reader.read(&mut probe) => break true,
        }
    };
    let _ = writer.shutdown().await;
    if left && let Ok(Submission { job_id, .. }) = result {
        // Unless it comes back for the job, nobody opens the streams of its tasks.
        let left = Request::Left {
            job_id,
            submitter: peer.to_string(),
        };
        let _ = shared.requests.send(left).await;
    }
}

/// Removes from `peer`, a node joining again after being away (or restarted), what clients
/// deleted in `domains` meanwhile, before clients can list it there.
async fn purge_returning(shared: &Shared, peer: &PeerId, domains: Vec<String>) {
    let node = peer.to_string();
    let purge = repair::purge_deleted(&shared.purger, &shared.tombstones, &node, domains);
    if tokio::time::timeout(PURGE_TIMEOUT, purge).await.is_err() {
        tracing::warn!(%peer, "removing what clients deleted while the node was away took too long; its audit will");
    }
}

/// `/holders/v1`: the nodes that hold data of a domain the peer may use, and with `follow`
/// the holders again after each change, until the peer goes away.
pub(super) async fn serve_holders(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let request = tokio::time::timeout(
        shared.first_request_timeout(),
        read_message::<HoldersRequest, _>(&mut reader, MAX_HOLDERS_REQUEST),
    )
    .await;
    let HoldersRequest { domain_id, follow } = match request {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad {HOLDERS_V1} request: {}", domain_proto::ErrorChain(&e));
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no {HOLDERS_V1} request in time");
            return;
        }
    };
    if let Err(refusal) = shared.policy.check_submitter(&domain_id, &peer) {
        tracing::warn!(%peer, "refused a holders request: {}", domain_proto::ErrorChain(&refusal));
        let answer = HoldersResponse {
            err_msg: domain_proto::ErrorChain(&refusal).to_string(),
            holders: Vec::new(),
        };
        let _ = send_frame(shared, &mut writer, &answer).await;
        let _ = writer.shutdown().await;
        return;
    }
    let follow = follow == Some(true);
    let mut probe = [0u8; 1];
    'follow: loop {
        let holders = |reply| Request::Holders {
            domain: domain_id.clone(),
            follow,
            reply,
        };
        let Some(HoldersNow { holders, changes }) = ask(&shared.requests, holders).await else {
            break;
        };
        let answer = HoldersResponse {
            err_msg: String::new(),
            holders,
        };
        if send_frame(shared, &mut writer, &answer).await.is_err() {
            break;
        }
        let Some(mut changes) = changes else { break };
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(HoldersChange::Domain(domain)) if domain != domain_id => {}
                    // This domain's holders changed, or those of every domain, or changes
                    // were missed: the holders are sent again whole.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue 'follow,
                    Err(broadcast::error::RecvError::Closed) => break 'follow,
                },
                // The peer writes nothing more: any byte, its close or an error ends it.
                _ = reader.read(&mut probe) => break 'follow,
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// `/monitor/v1`: after the client's `ack`, every running job it may watch and the last finished
/// ones (`MONITOR_FINISHED_TAIL` in `scheduler_thread`), then each change.
pub(super) async fn serve_monitor(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut ack = [0u8; MONITOR_ACK.len()];
    match tokio::time::timeout(shared.first_request_timeout(), reader.read_exact(&mut ack)).await {
        Ok(Ok(_)) if &ack == MONITOR_ACK => {}
        _ => {
            tracing::debug!(%peer, "no {MONITOR_V1} ack");
            return;
        }
    }
    let mut probe = [0u8; 1];
    'watch: loop {
        let Some(Watch { jobs, mut updates }) =
            ask(&shared.requests, |reply| Request::Watch { reply }).await
        else {
            break;
        };
        for view in jobs {
            if send_view(shared, peer, &mut writer, &view).await.is_err() {
                break 'watch;
            }
        }
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Ok(view) => {
                        if send_view(shared, peer, &mut writer, &view).await.is_err() {
                            break 'watch;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(%peer, missed, "monitor fell behind; sending every job again");
                        continue 'watch;
                    }
                    Err(broadcast::error::RecvError::Closed) => break 'watch,
                },
                _ = reader.read(&mut probe) => break 'watch,
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// Writes a job view as one or more `Job` frames, if `peer` may watch its domain.
async fn send_view<W: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: PeerId,
    writer: &mut W,
    view: &JobView,
) -> Result<(), ()> {
    if !shared.policy.may_watch(&view.domain, &peer) {
        return Ok(());
    }
    for job in split_job(&view.job, MONITOR_FRAME_BUDGET) {
        send_frame(shared, writer, &job).await?;
    }
    Ok(())
}

/// Splits a job into jobs of the same id and name whose tasks take about `budget` encoded bytes
/// each (at least one task each).
fn split_job(job: &Job, budget: usize) -> Vec<Job> {
    let empty = || Job {
        id: job.id.clone(),
        name: job.name.clone(),
        tasks: Vec::new(),
    };
    let mut frames = vec![empty()];
    let mut used = 0;
    for task in &job.tasks {
        let len = task.encoded_len();
        if used + len > budget && frames.last().is_some_and(|f| !f.tasks.is_empty()) {
            frames.push(empty());
            used = 0;
        }
        used += len;
        if let Some(frame) = frames.last_mut() {
            frame.tasks.push(task.clone());
        }
    }
    frames
}

/// Writes one frame within the request timeout.
async fn send_frame<W: AsyncWrite + Unpin, M: prost::Message>(
    shared: &Shared,
    writer: &mut W,
    message: &M,
) -> Result<(), ()> {
    match tokio::time::timeout(shared.request_timeout, write_message(writer, message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The public keys `/public-key/v1` serves: those of the domains served that have a key. Keys
/// are never created on request, so a peer cannot make the manager write files.
pub(super) struct ServedKeys {
    pub(super) issuer: Arc<DomainKeyIssuer>,
    pub(super) policy: Arc<DomainPolicy>,
}

impl ServedKeys {
    fn lookup(&self, domain: &str) -> Result<PublicKey, String> {
        if !self.policy.serves(domain) {
            return Err("unknown domain".into());
        }
        let keys = self.issuer.keys();
        if !keys.key_path(domain).exists() {
            return Err("the domain has no key yet".into());
        }
        keys.key(domain)
            .map(|key| key.public_key())
            .map_err(|e| domain_proto::ErrorChain(&e).to_string())
    }
}

impl PublicKeySource for ServedKeys {
    fn public_key(
        &self,
        domain_id: &str,
    ) -> impl Future<Output = Result<PublicKey, String>> + Send {
        std::future::ready(self.lookup(domain_id))
    }
}

pub(super) async fn serve_key<S: AsyncRead + AsyncWrite + Unpin + Send>(
    shared: &Shared,
    keys: &ServedKeys,
    peer: PeerId,
    stream: S,
) {
    // One small request and its answer: the first request's deadline is the stream's.
    let limits = Limits {
        idle_timeout: shared.first_request_timeout(),
        ..Limits::default()
    };
    match serve_public_key(stream, keys, &limits).await {
        Ok(domain) => tracing::debug!(%peer, %domain, "served a public key"),
        Err(e) => tracing::debug!(%peer, "{PUBLIC_KEY_V1}: {}", domain_proto::ErrorChain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_job_is_split_into_frames_under_the_budget_keeping_every_task() {
        let task = |i: usize| Task {
            name: format!("task-{i}"),
            endpoint: "/store/v1".into(),
            job_id: "j".into(),
            sender: "s".repeat(50),
            ..Default::default()
        };
        let job = Job {
            id: "j".into(),
            name: "n".into(),
            tasks: (0..1000).map(task).collect(),
        };
        let frames = split_job(&job, 4096);
        assert!(frames.len() > 1);
        assert!(frames.iter().all(|f| f.encoded_len() <= 4096 + 200));
        let names: Vec<_> = frames.iter().flat_map(|f| &f.tasks).cloned().collect();
        assert_eq!(names, job.tasks);
        assert!(frames.iter().all(|f| f.id == "j" && f.name == "n"));
    }

    const TIMEOUTS: (std::time::Duration, std::time::Duration) = (
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(10),
    );

    /// A node's side of a `/task-status/v1` stream that sent one DONE report and closed its
    /// writing half; the manager's side runs `relay_reports` on the returned channel.
    async fn one_report() -> (
        tokio::io::DuplexStream,
        mpsc::Receiver<Request>,
        tokio::task::JoinHandle<()>,
    ) {
        let (mut node, manager) = tokio::io::duplex(4096);
        let (requests, queue) = mpsc::channel(8);
        let served = tokio::spawn(async move {
            relay_reports(&requests, "node", TIMEOUTS, manager).await;
        });
        let report = Task {
            name: "copy-1".into(),
            job_id: "j".into(),
            status: domain_proto::task::Status::Done as i32,
            ..Default::default()
        };
        domain_proto::write_message(&mut node, &report)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        node.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        (node, queue, served)
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_stream_closes_only_once_its_reports_are_applied() {
        let (mut node, mut queue, served) = one_report().await;
        assert!(matches!(queue.recv().await, Some(Request::Report { .. })));
        let Some(Request::Applied { reply }) = queue.recv().await else {
            panic!("no Applied request after the reports");
        };
        // Not applied yet: the node's read must still wait.
        let mut answer = Vec::new();
        let early = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            node.read_to_end(&mut answer),
        )
        .await;
        assert!(early.is_err(), "closed before the reports were applied");
        let _ = reply.send(());
        node.read_to_end(&mut answer)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            answer.is_empty(),
            "applied reports draw no byte: {answer:?}"
        );
        served.await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test(start_paused = true)]
    async fn reports_not_applied_in_time_draw_a_byte_that_makes_the_node_send_them_again() {
        let (mut node, mut queue, served) = one_report().await;
        assert!(matches!(queue.recv().await, Some(Request::Report { .. })));
        // The scheduler never answers (stuck, or gone).
        let Some(Request::Applied { reply }) = queue.recv().await else {
            panic!("no Applied request after the reports");
        };
        let mut answer = Vec::new();
        node.read_to_end(&mut answer)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer, [STATUS_NOT_APPLIED]);
        drop(reply);
        served.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
