//! A hostile peer against a real node on loopback: one peer opens 1,000 task
//! streams of garbage and silence while a good client moves data with real
//! tokens. The good transfers succeed, the node keeps serving, nothing the
//! hostile peer sent is stored, and the node logs at most a line per hostile
//! stream. The node runs with its default limits (256 task streams, 128 handshakes,
//! 32 of them per peer, 5 s each): the point is that they hold. (`flood.rs` holds them
//! against many identities at once.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use domain_auth::{DomainKey, TaskClaims};
use domain_cluster::{ClusterHandle, ClusterStream, PeerId};
use domain_datastore::Datastore as _;
use domain_node::config::DEFAULT_MAX_HANDSHAKES_PER_PEER;
use domain_proto::DomainId;
use domain_proto::domain_data::Query;
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::{
    Code, ConsumeDataInputV1, DomainClusterHandshakeRequest, DomainClusterHandshakeResponse,
};
use domain_proto::{DEFAULT_MAX_FRAME, encode_frame, read_message_or_eof};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;

mod common;

use common::setup::{Setup, client};
use common::{DOMAIN, within};

/// Hostile streams that send garbage and close their write half.
const GARBAGE_STREAMS: usize = 700;
/// Hostile streams that send nothing, or a frame's beginning, and then wait: more than
/// the node takes from one peer, fewer than it takes to ban it.
const SILENT_STREAMS: usize = DEFAULT_MAX_HANDSHAKES_PER_PEER + 16;
/// Garbage streams from one identity: fewer than the failed handshakes that get a peer
/// banned (`flood.rs` shows the ban).
const STREAMS_PER_IDENTITY: usize = 32;
/// Garbage streams open at once: under the node's per-peer handshake limit, so
/// that most of them reach the handshake parser instead of being dropped at
/// the door (which the silent streams exercise).
const GARBAGE_IN_FLIGHT: usize = DEFAULT_MAX_HANDSHAKES_PER_PEER / 2;

/// What a hostile stream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Garbage {
    /// Random bytes, random length.
    RandomBytes,
    /// A 4-byte length over the 4 MiB frame limit, and a little of its frame.
    LengthOverTheLimit,
    /// A frame of valid length whose bytes are no protobuf message.
    FrameOfNoProtobuf,
    /// A well-formed frame of another message (a `/load/v1` request).
    OtherMessage,
    /// The first half of a well-formed handshake frame.
    TruncatedHandshake,
    /// A handshake whose token is no JWT.
    MalformedToken,
    /// A handshake whose token is signed by another key than the domain's.
    ForgedToken,
    /// A handshake with a real token that names the good client as sender.
    StolenToken,
    /// A handshake naming a domain the manager does not know (one per stream).
    MadeUpDomain,
    /// A handshake naming a domain id that cannot be a domain.
    InvalidDomain,
    /// Nothing: the stream goes away as soon as it is open.
    GoneAtOnce,
    /// A protocol the node does not serve.
    UnknownProtocol,
}

impl Garbage {
    const ALL: [Self; 12] = [
        Self::RandomBytes,
        Self::LengthOverTheLimit,
        Self::FrameOfNoProtobuf,
        Self::OtherMessage,
        Self::TruncatedHandshake,
        Self::MalformedToken,
        Self::ForgedToken,
        Self::StolenToken,
        Self::MadeUpDomain,
        Self::InvalidDomain,
        Self::GoneAtOnce,
        Self::UnknownProtocol,
    ];

    /// What the node's BadRequest answer says, for the kinds that reach the
    /// token check with a well-formed handshake.
    fn refusal(self) -> Option<&'static str> {
        match self {
            Self::MalformedToken => Some("malformed token"),
            Self::ForgedToken => Some("signature does not verify"),
            Self::StolenToken => Some("token is for sender"),
            Self::MadeUpDomain => Some("no public key"),
            Self::InvalidDomain => Some("invalid domain"),
            _ => None,
        }
    }
}

/// How a hostile stream ended, seen from the hostile peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The stream could not be opened (the protocol was refused).
    NotOpened,
    /// The node ended the stream without an answer.
    Closed,
    /// The node answered BadRequest with this message.
    Refused(String),
    /// The node accepted the handshake: the test fails.
    Accepted,
}

/// A small deterministic generator, so that a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

/// The hostile peers and what they have to send.
struct Hostile {
    /// Garbage stream `i` goes from `garbage[i / STREAMS_PER_IDENTITY]`: each sends fewer
    /// than it takes for the node to ban it, so that every stream reaches the parsers.
    garbage: Vec<ClusterHandle>,
    /// The peer of the silent streams.
    cluster: ClusterHandle,
    node: PeerId,
    /// Tokens of the hostile peer for each protocol, signed by a forger's key.
    forged: [String; 2],
    /// The good client's real tokens for each protocol.
    stolen: [String; 2],
}

fn handshake(access_token: &str, domain_id: &str) -> Vec<u8> {
    encode_frame(&DomainClusterHandshakeRequest {
        access_token: access_token.to_owned(),
        domain_id: domain_id.to_owned(),
    })
    .unwrap()
}

impl Hostile {
    /// Sends one garbage stream of `kind` and reads how the node ends it.
    async fn send(&self, kind: Garbage, index: usize, rng: &mut XorShift) -> Outcome {
        let side = index % 2;
        let protocol = match kind {
            Garbage::UnknownProtocol => "/garbage/v1",
            _ => [STORE_V1, LOAD_V1][side],
        };
        let cluster = &self.garbage[index / STREAMS_PER_IDENTITY];
        let Ok(mut stream) = cluster.open_stream(self.node, protocol).await else {
            return Outcome::NotOpened;
        };
        let bytes = match kind {
            Garbage::RandomBytes => {
                let len = 1 + usize::try_from(rng.next() % 4096).unwrap();
                rng.bytes(len)
            }
            Garbage::LengthOverTheLimit => {
                let len = u32::try_from(DEFAULT_MAX_FRAME).unwrap() + 1 + (rng.next() as u32 >> 8);
                let mut bytes = len.to_be_bytes().to_vec();
                bytes.extend(rng.bytes(64));
                bytes
            }
            Garbage::FrameOfNoProtobuf => {
                let mut bytes = 200u32.to_be_bytes().to_vec();
                bytes.extend([0xff; 200]);
                bytes
            }
            Garbage::OtherMessage => encode_frame(&ConsumeDataInputV1 {
                query: Query::default(),
                keep_alive: true,
                ..Default::default()
            })
            .unwrap(),
            Garbage::TruncatedHandshake => {
                let mut bytes = handshake(&self.forged[side], DOMAIN);
                bytes.truncate(bytes.len() / 2);
                bytes
            }
            Garbage::MalformedToken => handshake("not.a.token", DOMAIN),
            Garbage::ForgedToken => handshake(&self.forged[side], DOMAIN),
            Garbage::StolenToken => handshake(&self.stolen[side], DOMAIN),
            Garbage::MadeUpDomain => handshake(&self.forged[side], &format!("made-up-{index}")),
            Garbage::InvalidDomain => handshake(&self.forged[side], "../../etc/passwd"),
            Garbage::GoneAtOnce | Garbage::UnknownProtocol => {
                drop(stream);
                return Outcome::Closed;
            }
        };
        // The node may drop the stream before all of it is written: a refusal too.
        if stream.write_all(&bytes).await.is_ok() {
            let _ = stream.shutdown().await;
        }
        let answer = read_message_or_eof::<DomainClusterHandshakeResponse, _>(
            &mut stream,
            DEFAULT_MAX_FRAME,
        );
        match within("the node to end a garbage stream", answer).await {
            Ok(Some(response)) if response.code() == Code::Ok => Outcome::Accepted,
            Ok(Some(response)) => Outcome::Refused(response.err_msg),
            Ok(None) | Err(_) => Outcome::Closed,
        }
    }

    /// Opens a stream that sends at most the beginning of a frame and then
    /// waits, holding whatever the node gave it.
    async fn open_silent(&self, index: usize) -> ClusterStream {
        let side = index % 2;
        let mut stream = self
            .cluster
            .open_stream(self.node, [STORE_V1, LOAD_V1][side])
            .await
            .unwrap();
        let bytes = match index % 4 {
            0 => Vec::new(),
            1 => vec![0, 0],
            2 => {
                let mut bytes = 1000u32.to_be_bytes().to_vec();
                bytes.extend([7; 10]);
                bytes
            }
            _ => {
                let mut bytes = handshake(&self.forged[side], DOMAIN);
                bytes.pop();
                bytes
            }
        };
        // A stream the node has dropped already cannot be written: it ends at once.
        if stream.write_all(&bytes).await.is_ok() {
            let _ = stream.flush().await;
        }
        stream
    }
}

/// Reads `stream` until the node ends it; the node sends nothing to a stream
/// whose handshake has not arrived.
async fn until_ended(mut stream: ClusterStream) {
    let mut buf = [0; 64];
    for _ in 0..1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    panic!("the node keeps writing to a stream that never sent its handshake");
}

/// Counts the process's warnings and errors by level, target and message.
#[derive(Clone, Default)]
struct LogCount(Arc<Mutex<BTreeMap<String, usize>>>);

impl LogCount {
    fn snapshot(&self) -> BTreeMap<String, usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lines logged since `before`, by kind.
    fn since(&self, before: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
        self.snapshot()
            .into_iter()
            .map(|(line, n)| (n - before.get(&line).copied().unwrap_or(0), line))
            .filter(|(n, _)| *n > 0)
            .map(|(n, line)| (line, n))
            .collect()
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for LogCount {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let meta = event.metadata();
        let line = format!("{} {}: {}", meta.level(), meta.target(), message.0);
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(line)
            .or_default() += 1;
    }
}

fn total(lines: &BTreeMap<String, usize>, level: &str) -> usize {
    lines
        .iter()
        .filter(|(line, _)| line.starts_with(level))
        .map(|(_, n)| n)
        .sum()
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed);
    let mut bytes = rng.bytes(len / 8);
    bytes.resize(len, 0x5a);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_client_moves_data_while_a_peer_floods_the_node_with_garbage_and_silent_streams() {
    let logs = LogCount::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(logs.clone().with_filter(LevelFilter::WARN)),
    )
    .unwrap();
    let started = Instant::now();

    // The node's default limits, the ones in question.
    let setup = Setup::start(|c| c.join_interval = Duration::from_secs(60)).await;
    let node = setup.node.peer_id();
    let hostile_cluster = client(&setup.manager.addr);
    hostile_cluster
        .dial(setup.node.ready_addr().await.unwrap())
        .await
        .unwrap();
    let forger = DomainKey::generate(DOMAIN).unwrap();
    let forged = [STORE_V1, LOAD_V1].map(|endpoint| {
        let claims = TaskClaims::new(
            DOMAIN,
            "job-hostile",
            "hostile",
            hostile_cluster.local_peer_id().to_string(),
            node.to_string(),
            endpoint,
            SystemTime::now(),
            Duration::from_secs(60),
        );
        forger.issue(&claims).unwrap()
    });
    let store_a = setup.token("job-a", "upload", STORE_V1).await;
    let store_b = setup.token("job-b", "upload", STORE_V1).await;
    let load = setup.token("job-c", "download", LOAD_V1).await;
    let mut garbage = Vec::new();
    for _ in 0..GARBAGE_STREAMS.div_ceil(STREAMS_PER_IDENTITY) {
        let cluster = client(&setup.manager.addr);
        cluster
            .dial(setup.node.ready_addr().await.unwrap())
            .await
            .unwrap();
        garbage.push(cluster);
    }
    let hostile = Arc::new(Hostile {
        garbage: garbage.clone(),
        cluster: hostile_cluster.clone(),
        node,
        forged,
        stolen: [store_a.clone(), load.clone()],
    });
    let logged_before = logs.snapshot();

    // Garbage of every kind, and meanwhile a good upload of a few MiB.
    let mut workers = JoinSet::new();
    for worker in 0..GARBAGE_IN_FLIGHT {
        let hostile = Arc::clone(&hostile);
        workers.spawn(async move {
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
            let mut outcomes = Vec::new();
            for index in (worker..GARBAGE_STREAMS).step_by(GARBAGE_IN_FLIGHT) {
                let kind = Garbage::ALL[index % Garbage::ALL.len()];
                outcomes.push((kind, hostile.send(kind, index, &mut rng).await));
            }
            outcomes
        });
    }
    let a_big = content(3 << 20, 1);
    let ids_a = within(
        "the good upload among the garbage",
        setup.store(&store_a, &[("a-big", &a_big), ("a-small", b"small")]),
    )
    .await
    .unwrap();
    let outcomes: Vec<(Garbage, Outcome)> =
        within("the garbage streams to end", workers.join_all())
            .await
            .into_iter()
            .flatten()
            .collect();
    assert_eq!(outcomes.len(), GARBAGE_STREAMS);
    let mut by_kind: BTreeMap<Garbage, Vec<Outcome>> = BTreeMap::new();
    for (kind, outcome) in outcomes {
        assert_ne!(outcome, Outcome::Accepted, "{kind:?} was accepted");
        by_kind.entry(kind).or_default().push(outcome);
    }
    for (kind, outcomes) in &by_kind {
        let not_opened = outcomes
            .iter()
            .filter(|o| **o == Outcome::NotOpened)
            .count();
        let expected_not_opened = if *kind == Garbage::UnknownProtocol {
            outcomes.len()
        } else {
            0
        };
        assert_eq!(not_opened, expected_not_opened, "{kind:?}: {outcomes:?}");
        if let Some(reason) = kind.refusal() {
            let refusals: Vec<&String> = outcomes
                .iter()
                .filter_map(|o| match o {
                    Outcome::Refused(message) => Some(message),
                    _ => None,
                })
                .collect();
            // Most reach the check (a few may meet the per-peer limit at the
            // door), and every one that does is refused for its reason.
            assert!(!refusals.is_empty(), "{kind:?}: {outcomes:?}");
            for message in refusals {
                assert!(message.contains(reason), "{kind:?}: {message}");
            }
        }
    }
    within("the node to let go of the garbage streams", async {
        while setup.node.running_streams() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // Silent streams, more than the node takes from one peer, each holding its place
    // among the handshakes for as long as the node lets it (5 s).
    let mut silent = JoinSet::new();
    for index in 0..SILENT_STREAMS {
        silent.spawn(until_ended(hostile.open_silent(index).await));
    }
    let mut ended = 0;
    within("the node to take or drop every silent stream", async {
        while ended + setup.node.streams_in_handshake() < SILENT_STREAMS {
            while let Some(ended_one) = silent.try_join_next() {
                ended_one.unwrap();
                ended += 1;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let held = SILENT_STREAMS - ended;
    // None of them holds a task-stream permit: those go to accepted tokens only.
    assert_eq!(setup.node.running_streams(), 0);

    // The good client is served while they are held.
    let b_big = content(2 << 20, 2);
    let ids_b = within(
        "the good upload among the silent streams",
        setup.store(&store_b, &[("b-big", &b_big)]),
    )
    .await
    .unwrap();
    let mut loaded = within(
        "the good download among the silent streams",
        setup.load(&load, &[ids_a, ids_b].concat()),
    )
    .await;
    loaded.sort();
    assert_eq!(
        loaded,
        [
            ("a-big".to_owned(), a_big),
            ("a-small".to_owned(), b"small".to_vec()),
            ("b-big".to_owned(), b_big),
        ]
    );
    assert_eq!(held, DEFAULT_MAX_HANDSHAKES_PER_PEER, "silent streams held");

    // When the hostile peer goes, the node lets go of what it held.
    hostile_cluster.shutdown().await.unwrap();
    for cluster in garbage {
        cluster.shutdown().await.unwrap();
    }
    within("the silent streams to end", silent.join_all()).await;
    within("the node to let go of the silent streams", async {
        while setup.node.streams_in_handshake() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let store = setup.node.datastore();
    let mut names: Vec<String> = store
        .query(&DomainId::new(DOMAIN).unwrap(), &Query::default())
        .await
        .unwrap()
        .into_iter()
        .map(|metadata| metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a-big", "a-small", "b-big"]);
    for made_up in ["made-up-8", "made-up-20"] {
        let nothing = store
            .query(&DomainId::new(made_up).unwrap(), &Query::default())
            .await
            .unwrap();
        assert!(nothing.is_empty(), "{made_up}: {nothing:?}");
    }

    // At most a line per hostile stream, none of them an error.
    let logged = logs.since(&logged_before);
    let hostile_streams = GARBAGE_STREAMS + SILENT_STREAMS;
    assert!(
        total(&logged, "WARN") <= hostile_streams,
        "{} warnings for {hostile_streams} hostile streams: {logged:#?}",
        total(&logged, "WARN")
    );
    assert_eq!(total(&logged, "ERROR"), 0, "{logged:#?}");
    eprintln!(
        "{hostile_streams} hostile streams; the test took {:?}; logged: {logged:#?}",
        started.elapsed()
    );
    setup.stop().await;
}
