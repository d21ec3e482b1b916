//! How a [`Client`](super::Client) runs its jobs, and where the `domain` command keeps its identity.

use std::path::PathBuf;
use std::time::Duration;

use domain_capabilities::Limits;

/// How a [`Client`](super::Client) runs its jobs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The timeout of each task: the manager assigns the task again when it has not
    /// finished by then, and the token expires. The manager takes at most a week.
    pub task_timeout: Duration,
    /// How long to wait for the manager to assign a task (a node with free capacity).
    pub assignment_timeout: Duration,
    /// Attempts per task, each on the node the manager assigns; the scheduler allows
    /// one attempt and three retries.
    pub max_attempts: u32,
    /// Limits of the task streams (frame size, idle timeout, I/O batch).
    pub limits: Limits,
    /// The limit on each remote wait of the swarm (dials, opening streams).
    pub request_timeout: Duration,
    /// How long to keep trying to reach an assigned node before the attempt fails, and
    /// the manager (restarting, or electing a leader) before a request to it fails.
    pub connect_patience: Duration,
    /// Let a download replace a file that already exists in its folder; otherwise such an
    /// item fails with [`ClientError::WouldReplace`](super::ClientError::WouldReplace) and the file is left as it was.
    pub overwrite: bool,
    /// The timeout of a subscription's tasks, which bounds the life of each node
    /// stream's token (at most an hour). A node ends a stream when its token expires; the
    /// subscription renews each one on a fresh token before then, so it lasts until
    /// [`Subscription::unsubscribe`](super::Subscription::unsubscribe).
    pub subscription_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            task_timeout: Duration::from_secs(10 * 60),
            assignment_timeout: Duration::from_secs(60),
            max_attempts: 4,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(30),
            connect_patience: Duration::from_secs(15),
            overwrite: false,
            subscription_timeout: Duration::from_secs(3600),
        }
    }
}

/// `timeout` as a `TaskRequest` carries it, in the grammar of
/// `domain_scheduler::parse_timeout` (posemesh's: one number, one unit): in the largest
/// unit that holds it whole, to read well in job listings; in milliseconds rounded up
/// otherwise, so that no timeout becomes zero.
pub(crate) fn wire_timeout(timeout: Duration) -> String {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    for (unit, per_unit) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis % per_unit == 0 {
            return format!("{}{unit}", millis / per_unit);
        }
    }
    format!("{millis}ms")
}

/// Where the `domain` command keeps its identity by default:
/// `$XDG_CONFIG_HOME/domain/identity.key`, or `~/.config/domain/identity.key`.
#[must_use]
pub fn default_identity_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".config"))
        })?;
    Some(config.join("domain").join("identity.key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_go_on_the_wire_in_the_largest_whole_unit_or_milliseconds_rounded_up() {
        assert_eq!(wire_timeout(Duration::from_secs(600)), "10m");
        assert_eq!(wire_timeout(Duration::from_secs(7200)), "2h");
        assert_eq!(wire_timeout(Duration::from_secs(90)), "90s");
        assert_eq!(wire_timeout(Duration::from_millis(1500)), "1500ms");
        assert_eq!(wire_timeout(Duration::from_micros(1500)), "2ms");
        assert_eq!(wire_timeout(Duration::from_nanos(1)), "1ms");
    }
}
