//! Wire types of the provider APIs the gateway speaks: serde only, no IO.
//! They hold just the fields the gateway reads; everything else in a body
//! is forwarded as it came.

pub mod openai;
