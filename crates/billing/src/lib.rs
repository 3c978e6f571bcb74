//! Money rules of the gateway: units, prices, the cost of a request, and the
//! in-memory holds that reserve a request's upper-bound cost before the
//! upstream call.
//!
//! 1 unit = 1/1,000,000 USD. Prices are decimal USD per million tokens, so
//! the cost of one token in units equals the price number: a request's cost
//! is `Σ tokens × price × group ratio`, computed exactly with decimals and
//! rounded once, half away from zero, to whole units. A model may also have a
//! price per call (USD per request or per image), added as
//! `calls × per_call × 1 000 000` units before the ratio and the rounding.

mod price;
mod wallet;

pub use price::{
    Price, PriceError, Usage, cost_units, cost_units_calls, parse_decimal, seed_per_call,
    seed_prices, units_to_usd, usd_to_units,
};
pub use rust_decimal::Decimal;
pub use wallet::{Hold, HoldError, KeyBudget, Wallet};

pub mod ops;
