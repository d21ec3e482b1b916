//! The swarm on loopback: transports, bulk transfer, relay, gossip, following the leader
//! of several managers, and the client side of the manager's protocols against in-test
//! servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod gossip;
mod lifecycle;
mod managers;
mod nat;
mod relay;
mod requests;
mod transports;
