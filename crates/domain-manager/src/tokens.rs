//! Task tokens for scripts: what `domain-manager token issue` signs, so that a program can
//! open a node straight away (`domain upload --node ADDR --token T`) without submitting a
//! job.
//!
//! Such a token carries the same claims and the same limits as one the scheduler issues
//! (docs/design.md §5): one sender, one node, one endpoint, one domain, at most an hour. It
//! is refused to a sender the domain's allow-list does not name, so that the operator's
//! command can grant no more than a job submitted by that sender would get.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, SystemTime};
//! use domain_auth::{DomainKeyStore, Expected, verify};
//! use domain_cluster::{identity::Identity, PeerId};
//! use domain_manager::{DomainPolicy, DomainSpec, create_domain};
//! use domain_manager::tokens::{TokenRequest, issue_token};
//!
//! let dir = tempfile::tempdir()?;
//! let data = dir.path().join("manager");
//! let script = Identity::generate().peer_id();
//! create_domain(&data, "scans", &[script])?;
//! let keys = DomainKeyStore::open(domain_manager::config::keys_dir(&data))?;
//! let policy = DomainPolicy::from_specs(&[DomainSpec {
//!     id: "scans".into(),
//!     allow: vec![script.to_string()],
//!     replication: None,
//! }])?;
//! let node = PeerId::random();
//! let request = TokenRequest::new("scans".parse()?, script, node, "/store/v1");
//! let token = issue_token(&policy, &keys, None, &request, SystemTime::now())?;
//! let (sender, receiver) = (script.to_string(), node.to_string());
//! let expected = Expected { domain_id: "scans", receiver: &receiver, sender: &sender, endpoint: "/store/v1" };
//! let claims = verify(&token, &keys.key("scans")?.public_key(), &expected, SystemTime::now())?;
//! assert_eq!(claims.task_name, "direct");
//!
//! let stranger = TokenRequest::new("scans".parse()?, PeerId::random(), node, "/store/v1");
//! assert!(issue_token(&policy, &keys, None, &stranger, SystemTime::now()).is_err());
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime};

use domain_auth::{DomainKeyStore, KeyStoreError, MAX_TOKEN_LIFETIME, TaskClaims, TokenError};
use domain_cluster::PeerId;
use domain_proto::DomainId;
use domain_proto::protocols::TASK_PROTOCOLS;

use crate::domains::{DomainPolicy, Refusal};

/// How long a token lives when the request does not say.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// The task name of a token issued for a script, when the request does not name one.
pub const DEFAULT_TASK_NAME: &str = "direct";

/// What a token for a script grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The domain whose data the token opens.
    pub domain: DomainId,
    /// The peer that will open the stream (the script's identity: `domain id` prints it).
    pub sender: PeerId,
    /// The node that will accept it.
    pub node: PeerId,
    /// The one protocol the token opens: one of [`TASK_PROTOCOLS`].
    pub endpoint: String,
    /// How long the token stays valid, at most [`MAX_TOKEN_LIFETIME`].
    pub ttl: Duration,
    /// The job id the token names [default: a fresh UUID, so that tokens never share one].
    pub job_id: Option<String>,
    /// The task name the token names [default: [`DEFAULT_TASK_NAME`]].
    pub task_name: Option<String>,
}

impl TokenRequest {
    /// A request for the default lifetime, job id and task name.
    #[must_use]
    pub fn new(domain: DomainId, sender: PeerId, node: PeerId, endpoint: &str) -> Self {
        Self {
            domain,
            sender,
            node,
            endpoint: endpoint.to_owned(),
            ttl: DEFAULT_TOKEN_TTL,
            job_id: None,
            task_name: None,
        }
    }
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The domain is not served, or the sender is not on its allow-list.
    #[error("refused")]
    Refused(#[source] Refusal),
    /// The endpoint is not a protocol that tokens open.
    #[error("{endpoint:?} is not a task protocol (one of {})", TASK_PROTOCOLS.join(", "))]
    Endpoint {
        /// The endpoint asked for.
        endpoint: String,
    },
    /// The lifetime is zero or longer than any token may live.
    #[error("a token lives more than 0 s and at most {} s, not {} s", MAX_TOKEN_LIFETIME.as_secs(), ttl.as_secs_f64())]
    Lifetime {
        /// The lifetime asked for.
        ttl: Duration,
    },
    /// This manager holds no key for the domain: it signs none of its tokens.
    #[error(
        "this manager holds no key of domain {domain:?} (`domain-manager domain create` or `import` makes one)"
    )]
    NoKey {
        /// The domain.
        domain: String,
    },
    /// The key this manager holds is not the one the managers on etcd sign with.
    #[error(
        "this manager's key of domain {domain:?} is not the one the managers on etcd publish ({published}): nodes would refuse its tokens"
    )]
    KeyMismatch {
        /// The domain.
        domain: String,
        /// The public key etcd publishes, hex.
        published: String,
    },
    /// The domain's key cannot be read.
    #[error("reading the domain's key")]
    Keys(#[source] KeyStoreError),
    /// Signing failed.
    #[error("signing the token")]
    Sign(#[source] TokenError),
}

/// Signs the token `request` asks for, at `now`, with the domain's key from `keys`, once
/// `policy` lets the sender submit to the domain. `published` is the domain's public key
/// as managers sharing etcd publish it (hex), which the key of `keys` must be.
///
/// # Errors
/// [`IssueError`]: nothing is signed unless every check passes.
pub fn issue_token(
    policy: &DomainPolicy,
    keys: &DomainKeyStore,
    published: Option<&str>,
    request: &TokenRequest,
    now: SystemTime,
) -> Result<String, IssueError> {
    let domain = request.domain.as_str();
    policy
        .check_submitter(domain, &request.sender)
        .map_err(IssueError::Refused)?;
    if !TASK_PROTOCOLS.contains(&request.endpoint.as_str()) {
        return Err(IssueError::Endpoint {
            endpoint: request.endpoint.clone(),
        });
    }
    if request.ttl.is_zero() || request.ttl > MAX_TOKEN_LIFETIME {
        return Err(IssueError::Lifetime { ttl: request.ttl });
    }
    // `key` would make a key that no node knows: only one already held may sign.
    if !keys.key_path(domain).exists() {
        return Err(IssueError::NoKey {
            domain: domain.to_owned(),
        });
    }
    let key = keys.key(domain).map_err(IssueError::Keys)?;
    if let Some(published) = published.filter(|p| *p != key.public_key().to_string()) {
        return Err(IssueError::KeyMismatch {
            domain: domain.to_owned(),
            published: published.to_owned(),
        });
    }
    let job_id = request
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let task_name = request.task_name.as_deref().unwrap_or(DEFAULT_TASK_NAME);
    let claims = TaskClaims::new(
        domain,
        job_id,
        task_name,
        request.sender.to_string(),
        request.node.to_string(),
        &request.endpoint,
        now,
        request.ttl,
    );
    key.issue(&claims).map_err(IssueError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::DomainSpec;

    struct Fixture {
        _dir: tempfile::TempDir,
        keys: DomainKeyStore,
        policy: DomainPolicy,
        allowed: PeerId,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("manager");
        let allowed = PeerId::random();
        crate::create_domain(&data, "scans", &[allowed]).unwrap();
        let keys = DomainKeyStore::open(crate::config::keys_dir(&data)).unwrap();
        let policy = DomainPolicy::from_specs(&[
            DomainSpec {
                id: "scans".into(),
                allow: vec![allowed.to_string()],
                replication: None,
            },
            DomainSpec {
                id: "keyless".into(),
                allow: vec![allowed.to_string()],
                replication: None,
            },
        ])
        .unwrap();
        Fixture {
            _dir: dir,
            keys,
            policy,
            allowed,
        }
    }

    fn request(fixture: &Fixture, domain: &str) -> TokenRequest {
        TokenRequest::new(
            domain.parse().unwrap(),
            fixture.allowed,
            PeerId::random(),
            "/load/v1",
        )
    }

    fn issue(fixture: &Fixture, request: &TokenRequest) -> Result<String, IssueError> {
        issue_token(
            &fixture.policy,
            &fixture.keys,
            None,
            request,
            SystemTime::now(),
        )
    }

    #[test]
    fn a_token_names_exactly_what_was_asked_and_lives_its_ttl() {
        let fixture = fixture();
        let mut asked = request(&fixture, "scans");
        asked.ttl = Duration::from_secs(90);
        asked.job_id = Some("nightly-export".into());
        let token = issue(&fixture, &asked).unwrap();
        let claims = TaskClaims::read_unverified(&token).unwrap();
        assert_eq!(claims.domain_id, "scans");
        assert_eq!(claims.job_id, "nightly-export");
        assert_eq!(claims.task_name, DEFAULT_TASK_NAME);
        assert_eq!(claims.sender, asked.sender.to_string());
        assert_eq!(claims.receiver, asked.node.to_string());
        assert_eq!(claims.endpoint, "/load/v1");
        assert_eq!(claims.exp - claims.iat, 90);
        assert!(!claims.copy, "a script's token never places copies");
    }

    #[test]
    fn tokens_without_a_job_id_never_share_one() {
        let fixture = fixture();
        let asked = request(&fixture, "scans");
        let a = TaskClaims::read_unverified(&issue(&fixture, &asked).unwrap()).unwrap();
        let b = TaskClaims::read_unverified(&issue(&fixture, &asked).unwrap()).unwrap();
        assert_ne!(a.job_id, b.job_id);
    }

    #[test]
    fn a_sender_off_the_allow_list_an_unknown_domain_or_a_keyless_one_gets_nothing() {
        let fixture = fixture();
        let mut stranger = request(&fixture, "scans");
        stranger.sender = PeerId::random();
        assert!(matches!(
            issue(&fixture, &stranger),
            Err(IssueError::Refused(Refusal::NotAllowed { .. }))
        ));
        assert!(matches!(
            issue(&fixture, &request(&fixture, "elsewhere")),
            Err(IssueError::Refused(Refusal::UnknownDomain { .. }))
        ));
        assert!(matches!(
            issue(&fixture, &request(&fixture, "keyless")),
            Err(IssueError::NoKey { .. })
        ));
        assert!(
            !fixture.keys.key_path("keyless").exists(),
            "asking must not make a key"
        );
    }

    #[test]
    fn endpoints_other_than_task_protocols_and_lifetimes_past_an_hour_are_refused() {
        let fixture = fixture();
        let mut asked = request(&fixture, "scans");
        asked.endpoint = "/jobs/v1".into();
        assert!(matches!(
            issue(&fixture, &asked),
            Err(IssueError::Endpoint { .. })
        ));
        for ttl in [Duration::ZERO, MAX_TOKEN_LIFETIME + Duration::from_secs(1)] {
            let mut asked = request(&fixture, "scans");
            asked.ttl = ttl;
            assert!(matches!(
                issue(&fixture, &asked),
                Err(IssueError::Lifetime { .. })
            ));
        }
        let mut longest = request(&fixture, "scans");
        longest.ttl = MAX_TOKEN_LIFETIME;
        assert!(issue(&fixture, &longest).is_ok());
    }

    #[test]
    fn a_key_other_than_the_published_one_signs_nothing() {
        let fixture = fixture();
        let outcome = issue_token(
            &fixture.policy,
            &fixture.keys,
            Some("00"),
            &request(&fixture, "scans"),
            SystemTime::now(),
        );
        assert!(matches!(outcome, Err(IssueError::KeyMismatch { .. })));
    }
}
