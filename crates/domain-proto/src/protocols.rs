//! Protocol ids of the domain cluster (docs/protocol.md).
//!
//! Stream protocols are opened per task or per request; the `/posemesh/…` names
//! replace libp2p's defaults for identify and Kademlia so that posemesh peers
//! and ours find each other.

/// Anyone asks a peer for a domain's Ed25519 public key.
pub const PUBLIC_KEY_V1: &str = "/public-key/v1";
/// A node joins the manager with its capabilities.
pub const JOIN_V1: &str = "/join/v1";
/// A client submits a job to the manager and receives its tasks.
pub const JOBS_V1: &str = "/jobs/v1";
/// A client follows every job's changes on the manager.
pub const MONITOR_V1: &str = "/monitor/v1";
/// A client asks the manager which nodes hold data of a domain (an extension).
pub const HOLDERS_V1: &str = "/holders/v1";
/// Anyone asks a manager which manager leads (an extension: posemesh has one manager).
pub const LEADER_V1: &str = "/leader/v1";
/// A task's sender or receiver reports its status to the manager (an extension: posemesh
/// gossips task updates on the job's topic, which any peer may follow).
pub const TASK_STATUS_V1: &str = "/task-status/v1";
/// The `Task` frames one `/task-status/v1` stream carries at most.
pub const MAX_STATUS_REPORTS: usize = 256;
/// The largest `Task` frame of `/task-status/v1`: names and peer ids, no token.
pub const MAX_STATUS_FRAME: usize = 16 * 1024;
/// What a manager writes on a `/task-status/v1` stream, before closing it, when it did not
/// apply the reports (it closes without a byte once they are applied and stored): the
/// node sends them again.
pub const STATUS_NOT_APPLIED: u8 = 1;
/// A task sender stores items on a receiver.
pub const STORE_V1: &str = "/store/v1";
/// A task sender loads items (or subscribes to new ones) from a receiver.
pub const LOAD_V1: &str = "/load/v1";
/// A task sender removes items from a receiver (an extension: posemesh has no delete).
pub const DELETE_V1: &str = "/delete/v1";

/// Every stream protocol above, for registering handlers.
pub const ALL_STREAM_PROTOCOLS: [&str; 10] = [
    PUBLIC_KEY_V1,
    LEADER_V1,
    JOIN_V1,
    JOBS_V1,
    MONITOR_V1,
    HOLDERS_V1,
    TASK_STATUS_V1,
    STORE_V1,
    LOAD_V1,
    DELETE_V1,
];

/// The task-stream protocols, whose streams open with a handshake.
pub const TASK_PROTOCOLS: [&str; 3] = [STORE_V1, LOAD_V1, DELETE_V1];

/// libp2p identify protocol name.
pub const IDENTIFY: &str = "/posemesh/id/1.0.0";
/// libp2p Kademlia protocol name.
pub const KADEMLIA: &str = "/posemesh/kad/1.0.0";

/// What a client writes first on `/monitor/v1`.
pub const MONITOR_ACK: &[u8; 3] = b"ack";
