//! The ways the cluster layer fails, each naming its input.

use std::path::PathBuf;
use std::time::Duration;

use domain_proto::InvalidDomainId;
use libp2p::{Multiaddr, PeerId};

/// Why an identity key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, writing or inspecting the file failed.
    #[error("identity file {path}")]
    Io {
        /// The key file (or its folder).
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The file can be read by its group or by others: the key may have leaked.
    #[error(
        "identity file {path} has mode {mode:o}: group and others must have no access (chmod 600)"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is longer than any encoded key pair, so it is not one.
    #[error("identity file {path} holds {len} bytes, more than a key pair's {limit}")]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The largest length accepted.
        limit: u64,
    },
    /// The file does not hold a protobuf-encoded libp2p key pair.
    #[error("identity file {path} is not a libp2p key pair")]
    Decode {
        /// The key file.
        path: PathBuf,
        /// What decoding found wrong.
        source: libp2p::identity::DecodingError,
    },
    /// The key pair could not be encoded for writing.
    #[error("cannot encode the key pair for {path}")]
    Encode {
        /// The key file.
        path: PathBuf,
        /// What encoding found wrong.
        source: libp2p::identity::DecodingError,
    },
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// [`Cluster::start`](crate::Cluster::start) was called outside a Tokio runtime.
    #[error("the cluster needs a Tokio runtime to run its event loop")]
    NoRuntime,
    /// The transport stack could not be built (Noise key derivation).
    #[error("cannot set up the Noise handshake")]
    Noise(#[from] libp2p::noise::Error),
    /// Gossipsub refused its configuration.
    #[error("invalid gossipsub configuration")]
    GossipsubConfig(#[from] libp2p::gossipsub::ConfigBuilderError),
    /// Gossipsub refused to start with its configuration and key.
    #[error("cannot set up gossipsub: {0}")]
    GossipsubSetup(&'static str),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// The transport's reason.
        source: libp2p::TransportError<std::io::Error>,
    },
    /// A configured listener closed before it reported an address.
    #[error("listeners failed: {}", reasons.join("; "))]
    ListenerFailed {
        /// Why each failed listener closed.
        reasons: Vec<String>,
    },
    /// A multiaddr that must name its peer (`/p2p/<id>`) does not.
    #[error("address {addr} does not end with /p2p/<peer id>")]
    MissingPeerId {
        /// The address.
        addr: Multiaddr,
    },
    /// A dial failed.
    #[error("cannot dial {target}")]
    Dial {
        /// The address or peer dialled.
        target: String,
        /// The swarm's reason (shared: every handle waiting on one dial gets it).
        source: std::sync::Arc<libp2p::swarm::DialError>,
    },
    /// The peer could not be reached directly nor through the relay.
    #[error("cannot reach {peer}: direct dial failed ({direct}); relayed dial failed ({relayed})")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why the direct dial failed.
        direct: Box<ClusterError>,
        /// Why the dial through the relay failed.
        relayed: Box<ClusterError>,
    },
    /// This peer holds no relay reservation.
    #[error("no relay reservation: {reason}")]
    NoRelayReservation {
        /// Why (not requested, refused, lost).
        reason: String,
    },
    /// A protocol id is not a valid libp2p protocol name (it must start with `/`).
    #[error("invalid protocol id {protocol:?}")]
    InvalidProtocol {
        /// The id given.
        protocol: String,
    },
    /// Inbound streams of this protocol are already being accepted elsewhere.
    #[error("inbound streams of {protocol} are already accepted by another handle")]
    AlreadyAccepting {
        /// The protocol id.
        protocol: String,
    },
    /// A stream could not be opened.
    #[error("cannot open a {protocol} stream to {peer}")]
    OpenStream {
        /// The remote peer.
        peer: PeerId,
        /// The protocol id.
        protocol: String,
        /// Why it failed.
        source: Box<crate::stream_behaviour::OpenStreamError>,
    },
    /// A remote wait took longer than allowed.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        operation: String,
        /// The limit that passed.
        after: Duration,
    },
    /// A framed message could not be read or written on a protocol stream.
    #[error("{protocol} with {peer}")]
    Frame {
        /// The protocol id.
        protocol: &'static str,
        /// The remote peer.
        peer: PeerId,
        /// The framing failure.
        source: Box<domain_proto::FrameError>,
    },
    /// Raw bytes could not be read or written on a protocol stream.
    #[error("{protocol} with {peer}")]
    StreamIo {
        /// The protocol id.
        protocol: &'static str,
        /// The remote peer.
        peer: PeerId,
        /// The i/o failure.
        source: std::io::Error,
    },
    /// The manager took task status reports but did not apply them in time: they are to
    /// be sent again.
    #[error("manager {peer} did not apply the task status reports in time")]
    ReportsNotApplied {
        /// The manager.
        peer: PeerId,
    },
    /// The manager refused this node (not admitted, revoked, a bad invite).
    #[error("the manager refused this node: {message}")]
    JoinRefused {
        /// The manager's reason.
        message: String,
    },
    /// The manager refused to say which nodes hold a domain's data.
    #[error("the manager refused to name the holders of domain {domain:?}: {message}")]
    HoldersRefused {
        /// The domain asked about.
        domain: String,
        /// The manager's reason.
        message: String,
    },
    /// The manager refused a job.
    #[error("the manager refused job {name:?}: {message}")]
    JobRejected {
        /// The job's name.
        name: String,
        /// The manager's reason.
        message: String,
    },
    /// The manager answered a job submission with a code that is neither Accepted nor BadRequest.
    #[error("the manager answered job {name:?} with unexpected code {code}")]
    UnexpectedJobResponse {
        /// The job's name.
        name: String,
        /// The code received.
        code: i32,
    },
    /// A domain id that is not one, refused before anything is sent.
    #[error("not a valid domain id")]
    InvalidDomainId(#[source] InvalidDomainId),
    /// Subscribing to a gossip topic failed.
    #[error("cannot subscribe to topic {topic}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// Gossipsub's reason.
        source: libp2p::gossipsub::SubscriptionError,
    },
    /// Publishing on a gossip topic failed.
    #[error("cannot publish on topic {topic}")]
    Publish {
        /// The topic.
        topic: String,
        /// Gossipsub's reason.
        source: libp2p::gossipsub::PublishError,
    },
    /// A gossip subscriber fell behind and gossip events were dropped for it.
    #[error("gossip events fell behind: {missed} events were dropped")]
    GossipLagged {
        /// How many events were lost.
        missed: u64,
    },
    /// A peer-event subscriber fell behind and events were dropped for it.
    #[error("peer events fell behind: {missed} events were dropped")]
    PeerEventsLagged {
        /// How many events were lost.
        missed: u64,
    },
    /// A task update on gossip could not be decoded.
    #[error("bad task update on topic {topic} from {source_peer:?}: {error}")]
    BadTaskUpdate {
        /// The topic (the job id).
        topic: String,
        /// The peer that signed the message, when known.
        source_peer: Option<PeerId>,
        /// What decoding found wrong.
        error: Box<crate::gossip::TaskUpdateError>,
    },
    /// A task update could not be encoded.
    #[error("cannot encode a task update")]
    EncodeTaskUpdate(#[from] prost::EncodeError),
    /// No manager address was given.
    #[error("no manager address given")]
    NoManager,
    /// None of the managers led within the time allowed (all down, or an election that
    /// does not end: is etcd reachable?).
    #[error("none of the {managers} managers leads after {waited:?}")]
    NoLeader {
        /// How many managers were asked.
        managers: usize,
        /// How long they were asked.
        waited: Duration,
    },
    /// The event loop has stopped (after `shutdown`, or when it failed).
    #[error("the cluster event loop has stopped")]
    Shutdown,
}
