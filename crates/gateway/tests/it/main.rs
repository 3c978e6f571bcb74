//! The gateway's integration tests: one binary (`cargo test` builds it
//! once). Each test starts the real app on port 0 with a fresh database
//! and the mock upstream; suites that touch storage run on SQLite and, when
//! `TEST_DATABASE_URL` is set, on PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod abuse;
mod accounts_flows;
mod billing_exact;
mod catalog;
mod channels;
mod cli;
mod dialects;
mod errors;
mod managed_mode;
mod passthrough;
mod payments;
mod python_sdk;
mod relay_openai;
mod roles;
mod stats;
mod storage_suite;
mod streams;
