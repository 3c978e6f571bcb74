//! The data path of the gateway: authenticate the API key, pick a channel,
//! call the upstream, relay the answer (streamed chunk by chunk or whole),
//! meter its usage and settle the cost. Nothing here knows the HTTP
//! framework or SQL: it takes bytes in and hands bytes out, and writes
//! through `storage::Store` via the single writer task.

pub mod cache;
pub mod channels;
pub mod config;
pub mod error;
pub mod formats;
mod openai;
mod passthrough;
pub mod providers;
mod proxy;
mod sse;
mod tokens;
mod upstream;
pub mod writer;

pub use cache::{KeyEntry, Snapshot, UserEntry};
pub use config::RelayConfig;
pub use error::{ErrorKind, RelayError};
pub use proxy::{
    ChannelTest, Endpoint, Inbound, OutBody, Outbound, RELOAD_CHANNEL, Relay, deny_text,
};
pub use upstream::install_crypto_provider;
