//! Integration tests of the guard crate. Every rule runs against the in-process store and the
//! real Redis of `TEST_REDIS_URL` (skipped, with a message, when it is unset).
// Test helpers outside `#[test]` functions, as in the gateway's suite.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

mod autoban;
mod config;
mod limits;
mod multinode;
mod outage;
mod pubsub;
