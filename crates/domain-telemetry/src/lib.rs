//! What the domain cluster's binaries tell their operators.
//!
//! [`logs`]: the one way the three binaries (`domain-manager`, `domain-node`, `domain`) set
//! up their logs: on standard error, filtered by `RUST_LOG`, as text for people or, with
//! `--log-format json`, as one JSON object per line for log collectors ([`LogArgs`], the
//! flag; [`LogFormat`]; [`logs::init`]). The fields of the span an event happens in (a task's job, task name
//! and peer) are part of its line.
//!
//! [`metrics`] and [`http`]: a process's [`Metrics`] (prometheus-client's registry, where
//! each part of a manager or node registers its own, and libp2p its swarm's), served with
//! health and [`Readiness`] by an [`Endpoint`] on the operator's address (`--metrics ADDR`):
//! `/metrics`, `/healthz`, `/readyz`.
//!
//! ```
//! use domain_telemetry::{LogFormat, logs};
//!
//! // What a binary's `main` does first, with the format its flags name:
//! # fn main_of_a_binary(format: LogFormat) {
//! logs::init(format, "info");
//! # }
//! // A test or a tool can send the same lines elsewhere:
//! let subscriber = logs::subscriber(LogFormat::Json, logs::filter("info"), std::io::sink);
//! tracing::subscriber::with_default(subscriber, || {
//!     let span = tracing::info_span!("task", job = "j1", task = "upload", peer = "12D3KooW…");
//!     let _in_task = span.enter();
//!     tracing::info!(items = 3, "task stream done");
//! });
//! ```

pub mod http;
pub mod logs;
pub mod metrics;

pub use http::{Endpoint, EndpointError, Readiness};
pub use logs::{LogArgs, LogFormat};
pub use metrics::Metrics;
/// The metrics library, for the parts that register metrics.
pub use prometheus_client;
