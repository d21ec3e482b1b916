//! Task tokens for assignments: the scheduler asks a [`TokenIssuer`] for one token per
//! assignment, bound to the task's sender, receiver, endpoint, job and task (docs/design.md §5).

use std::time::{Duration, UNIX_EPOCH};

use domain_auth::{DomainKeyStore, TaskClaims};
use domain_proto::task::TaskRequest;

/// What one token grants: the claims the scheduler decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrant<'a> {
    /// The job's domain (selects the signing key).
    pub domain_id: &'a str,
    /// The job id.
    pub job_id: &'a str,
    /// The task's name within its job.
    pub task_name: &'a str,
    /// Peer id of the party that opens the task stream.
    pub sender: &'a str,
    /// Peer id of the node the task was assigned to.
    pub receiver: &'a str,
    /// The one protocol the token opens.
    pub endpoint: &'a str,
    /// Issue time, in milliseconds since the Unix epoch.
    pub issued_at: u64,
    /// How long the token is valid: the task's timeout, at most one hour.
    pub lifetime: Duration,
    /// The task is a copy the manager placed (see `TaskClaims::copy`).
    pub copy: bool,
}

/// Whether `task` is a copy the manager placed: a `/store/v1` task carrying replicate data
/// ([`domain_proto::REPLICATE_INPUT`]). The manager refuses such data on any job it did not
/// expand from a replicate request itself, so only its copies carry it.
#[must_use]
pub fn is_copy(task: &TaskRequest) -> bool {
    task.capability_filters.endpoint == domain_proto::protocols::STORE_V1
        && task
            .data
            .as_ref()
            .is_some_and(|data| data.type_url == domain_proto::REPLICATE_INPUT)
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue a token for task {task:?} of job {job_id} in domain {domain_id:?}")]
pub struct TokenError {
    /// The domain.
    pub domain_id: String,
    /// The job.
    pub job_id: String,
    /// The task.
    pub task: String,
    /// The issuer's reason.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl TokenError {
    /// A token error for `grant`, for the reason `source`.
    pub fn new(
        grant: &TokenGrant<'_>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            domain_id: grant.domain_id.to_owned(),
            job_id: grant.job_id.to_owned(),
            task: grant.task_name.to_owned(),
            source: source.into(),
        }
    }
}

/// Issues the access token of an assignment.
///
/// `Sync` because the scheduler signs the tokens of one scheduling pass in parallel.
pub trait TokenIssuer: Send + Sync {
    /// A signed token for `grant`.
    fn issue(&self, grant: &TokenGrant<'_>) -> Result<String, TokenError>;
}

/// The real issuer: JWTs (EdDSA) signed with the domain's key from a [`DomainKeyStore`].
#[derive(Debug)]
pub struct DomainKeyIssuer {
    keys: DomainKeyStore,
}

impl DomainKeyIssuer {
    /// Issues tokens with the keys of `keys` (a domain's key is created on its first token).
    pub fn new(keys: DomainKeyStore) -> Self {
        Self { keys }
    }

    /// The key store tokens are signed from (its public keys verify them).
    pub fn keys(&self) -> &DomainKeyStore {
        &self.keys
    }
}

impl TokenIssuer for DomainKeyIssuer {
    fn issue(&self, grant: &TokenGrant<'_>) -> Result<String, TokenError> {
        let key = self
            .keys
            .key(grant.domain_id)
            .map_err(|e| TokenError::new(grant, e))?;
        let claims = TaskClaims {
            copy: grant.copy,
            ..TaskClaims::new(
                grant.domain_id,
                grant.job_id,
                grant.task_name,
                grant.sender,
                grant.receiver,
                grant.endpoint,
                UNIX_EPOCH + Duration::from_millis(grant.issued_at),
                grant.lifetime,
            )
        };
        key.issue(&claims).map_err(|e| TokenError::new(grant, e))
    }
}
