//! Local stand-ins for outside services, each speaking the real protocol as documented,
//! used by the integration tests:
//!
//! - [`idp`]: an OpenID Connect identity provider shaped like Google's (discovery, JWKS,
//!   authorization and token endpoints) that signs real RS256 id_tokens.
//! - [`smtp`]: an SMTP sink that accepts mail over a real SMTP conversation and keeps it
//!   for the test to read.
//! - [`epay`]: a 彩虹易支付-style payment gateway (`submit.php`, MD5-signed notify callbacks).
//! - [`stripe`]: Stripe Checkout Sessions and signed webhook events.

pub mod epay;
pub mod idp;
pub mod smtp;
pub mod stripe;
