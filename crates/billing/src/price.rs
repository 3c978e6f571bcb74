//! Prices and cost computation. No binary float touches money here.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Decimal USD per million tokens, and optionally USD per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: Decimal,
    pub output: Decimal,
    pub cached_input: Decimal,
    /// Cache-creation input tokens (Anthropic's `cache_creation_input_tokens`);
    /// the input price unless set with [`Price::with_cache_write`].
    pub cache_write: Decimal,
    /// USD per call (per image for image generation); `None` = billed per
    /// token only.
    pub per_call: Option<Decimal>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceError {
    #[error("`{0}` is not a decimal number (write prices like 2.5 or 0.15)")]
    NotDecimal(String),
    #[error("`{0}` is negative: prices and ratios must be zero or more")]
    Negative(String),
}

/// Parses a non-negative decimal written in plain notation.
pub fn parse_decimal(s: &str) -> Result<Decimal, PriceError> {
    let d: Decimal = s
        .trim()
        .parse()
        .map_err(|_| PriceError::NotDecimal(s.to_string()))?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(PriceError::Negative(s.to_string()));
    }
    Ok(d)
}

impl Price {
    /// Builds a price from its stored text; an empty cached price means the
    /// input price. The cache-write price starts as the input price.
    pub fn parse(input: &str, output: &str, cached_input: &str) -> Result<Price, PriceError> {
        let input = parse_decimal(input)?;
        let output = parse_decimal(output)?;
        let cached_input = if cached_input.trim().is_empty() {
            input
        } else {
            parse_decimal(cached_input)?
        };
        Ok(Price {
            input,
            output,
            cached_input,
            cache_write: input,
            per_call: None,
        })
    }

    /// Sets the cache-write price from its stored text (empty = the input
    /// price).
    pub fn with_cache_write(mut self, cache_write: &str) -> Result<Price, PriceError> {
        self.cache_write = if cache_write.trim().is_empty() {
            self.input
        } else {
            parse_decimal(cache_write)?
        };
        Ok(self)
    }

    /// Sets the per-call price from its stored text (empty = none).
    pub fn with_per_call(mut self, per_call: &str) -> Result<Price, PriceError> {
        self.per_call = if per_call.trim().is_empty() {
            None
        } else {
            Some(parse_decimal(per_call)?)
        };
        Ok(self)
    }
}

/// Token counts of one request. `prompt` is every input token: it includes
/// `cached` (as OpenAI reports it) and `cache_write` (Anthropic reports cache
/// reads and writes apart from `input_tokens`; add them into `prompt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: u64,
}

/// The exact cost of `usage` at `price` times the group `ratio`, in units,
/// rounded once (half away from zero). Saturates at `i64::MAX`.
pub fn cost_units(price: &Price, ratio: Decimal, usage: Usage) -> i64 {
    cost_units_calls(price, ratio, usage, 0)
}

/// Like [`cost_units`], plus `calls` times the per-call price (USD per call
/// = per_call × 1 000 000 units); the sum is multiplied by the group ratio
/// and rounded once. A price without a per-call part adds nothing.
pub fn cost_units_calls(price: &Price, ratio: Decimal, usage: Usage, calls: u64) -> i64 {
    // cache reads and writes are parts of the prompt: never more than it
    let cached = usage.cached.min(usage.prompt);
    let cache_write = usage.cache_write.min(usage.prompt - cached);
    let uncached = usage.prompt - cached - cache_write;
    let mut total = Decimal::from(uncached) * price.input
        + Decimal::from(cached) * price.cached_input
        + Decimal::from(cache_write) * price.cache_write
        + Decimal::from(usage.completion) * price.output;
    if let Some(per_call) = price.per_call
        && calls > 0
    {
        total += Decimal::from(calls) * per_call * Decimal::from(1_000_000);
    }
    let total = total * ratio;
    total
        .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .unwrap_or(i64::MAX)
}

/// Units for a USD amount given as decimal text, e.g. "10" or "0.25".
pub fn usd_to_units(usd: &str) -> Result<i64, PriceError> {
    let d: Decimal = usd
        .trim()
        .parse()
        .map_err(|_| PriceError::NotDecimal(usd.to_string()))?;
    (d * Decimal::from(1_000_000))
        .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .ok_or_else(|| PriceError::NotDecimal(usd.to_string()))
}

/// Text USD for units, with six decimals ("1.250000").
pub fn units_to_usd(units: i64) -> String {
    let d = Decimal::new(units, 6);
    format!("{d:.6}")
}

/// The prices a new installation starts with (USD per million tokens:
/// input, output, cached input), editable afterwards.
pub fn seed_prices() -> &'static [(&'static str, &'static str, &'static str, &'static str)] {
    &[
        ("gpt-4o", "2.5", "10", "1.25"),
        ("gpt-4o-mini", "0.15", "0.6", "0.075"),
        ("gpt-4.1", "2", "8", "0.5"),
        ("gpt-4.1-mini", "0.4", "1.6", "0.1"),
        ("gpt-4.1-nano", "0.1", "0.4", "0.025"),
        ("o4-mini", "1.1", "4.4", "0.275"),
        ("gpt-3.5-turbo-instruct", "1.5", "2", ""),
        ("text-embedding-3-small", "0.02", "0", ""),
        ("text-embedding-3-large", "0.13", "0", ""),
        // DeepSeek-V3.2 list prices (since 2025-09-29), the same for both ids
        ("deepseek-chat", "0.28", "0.42", "0.028"),
        ("deepseek-reasoner", "0.28", "0.42", "0.028"),
        ("claude-sonnet-4-5", "3", "15", "0.3"),
        ("claude-haiku-4-5", "1", "5", "0.1"),
        ("claude-opus-4-1", "15", "75", "1.5"),
        ("gemini-2.5-pro", "1.25", "10", "0.31"),
        ("gemini-2.5-flash", "0.3", "2.5", "0.075"),
        ("gemini-2.0-flash", "0.1", "0.4", "0.025"),
        // tts-1: USD per million input characters
        ("tts-1", "15", "0", ""),
        ("omni-moderation-latest", "0", "0", ""),
        ("dall-e-3", "0", "0", ""),
        ("gpt-image-1", "0", "0", ""),
        ("whisper-1", "0", "0", ""),
    ]
}

/// Per-call prices seeded beside [`seed_prices`] (USD per call; per image
/// for image models). whisper-1 is priced per minute of audio upstream; this
/// service bills it per call.
pub fn seed_per_call() -> &'static [(&'static str, &'static str)] {
    &[
        ("dall-e-3", "0.04"),
        ("gpt-image-1", "0.04"),
        ("whisper-1", "0.006"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: &str, o: &str, c: &str) -> Price {
        Price::parse(i, o, c).unwrap()
    }

    #[test]
    fn cost_is_tokens_times_price_in_units() {
        // 1000 prompt tokens at $2.5/M = $0.0025 = 2500 units; 500 output at $10/M = 5000.
        let u = Usage {
            prompt: 1000,
            completion: 500,
            cached: 0,
            cache_write: 0,
        };
        assert_eq!(cost_units(&p("2.5", "10", ""), Decimal::ONE, u), 7500);
    }

    #[test]
    fn cached_tokens_use_cached_price() {
        let u = Usage {
            prompt: 1000,
            completion: 0,
            cached: 400,
            cache_write: 0,
        };
        // 600 × 2.5 + 400 × 1.25 = 1500 + 500
        assert_eq!(cost_units(&p("2.5", "10", "1.25"), Decimal::ONE, u), 2000);
        // cached more than prompt is clamped
        let u = Usage {
            prompt: 10,
            completion: 0,
            cached: 50,
            cache_write: 0,
        };
        assert_eq!(cost_units(&p("2.5", "10", "1.25"), Decimal::ONE, u), 13);
    }

    #[test]
    fn rounds_once_half_up() {
        // 3 tokens × 0.15 = 0.45 → 0; 10 × 0.15 = 1.5 → 2
        let price = p("0.15", "0.6", "");
        let r = |n| {
            cost_units(
                &price,
                Decimal::ONE,
                Usage {
                    prompt: n,
                    completion: 0,
                    cached: 0,
                    cache_write: 0,
                },
            )
        };
        assert_eq!(r(3), 0);
        assert_eq!(r(10), 2);
        // rounding happens after the group ratio, not per component
        let u = Usage {
            prompt: 3,
            completion: 3,
            cached: 0,
            cache_write: 0,
        };
        // 0.45 + 1.8 = 2.25 × 1.5 = 3.375 → 3
        assert_eq!(cost_units(&price, parse_decimal("1.5").unwrap(), u), 3);
    }

    #[test]
    fn cache_writes_use_the_cache_write_price_and_round_once() {
        // Claude Sonnet: input 3, output 15, cache read 0.3, cache write 3.75
        let price = p("3", "15", "0.3").with_cache_write("3.75").unwrap();
        // 100 uncached + 1000 read + 2000 written, 50 out:
        // 300 + 300 + 7500 + 750 = 8850
        let u = Usage {
            prompt: 3100,
            completion: 50,
            cached: 1000,
            cache_write: 2000,
        };
        assert_eq!(cost_units(&price, Decimal::ONE, u), 8850);
        // one written token: 3.75 → 4 (rounded once, half up), and with
        // ratio 0.8: 3.75 × 0.8 = 3.0
        let one = Usage {
            prompt: 1,
            cache_write: 1,
            ..Usage::default()
        };
        assert_eq!(cost_units(&price, Decimal::ONE, one), 4);
        assert_eq!(cost_units(&price, parse_decimal("0.8").unwrap(), one), 3);
        // 3 written + 3 read at ratio 1.1: (11.25 + 0.9) × 1.1 = 13.365 → 13
        let u = Usage {
            prompt: 6,
            cached: 3,
            cache_write: 3,
            ..Usage::default()
        };
        assert_eq!(cost_units(&price, parse_decimal("1.1").unwrap(), u), 13);
        // writes beyond what the prompt holds are clamped (reads first)
        let u = Usage {
            prompt: 10,
            cached: 8,
            cache_write: 50,
            ..Usage::default()
        };
        // 8 × 0.3 + 2 × 3.75 = 2.4 + 7.5 = 9.9 → 10
        assert_eq!(cost_units(&price, Decimal::ONE, u), 10);
    }

    #[test]
    fn cache_write_price_defaults_to_input() {
        let price = p("2.5", "10", "1.25");
        assert_eq!(price.cache_write, price.input);
        assert_eq!(price.clone().with_cache_write(" ").unwrap(), price);
        let u = Usage {
            prompt: 1000,
            cache_write: 400,
            ..Usage::default()
        };
        // written tokens at the input price: same as an uncached prompt
        assert_eq!(cost_units(&price, Decimal::ONE, u), 2500);
        assert!(matches!(
            price.clone().with_cache_write("-1"),
            Err(PriceError::Negative(_))
        ));
        assert!(matches!(
            price.with_cache_write("x"),
            Err(PriceError::NotDecimal(_))
        ));
    }

    #[test]
    fn usd_conversion() {
        assert_eq!(usd_to_units("10").unwrap(), 10_000_000);
        assert_eq!(usd_to_units("0.000001").unwrap(), 1);
        assert_eq!(units_to_usd(1_250_000), "1.250000");
        assert_eq!(units_to_usd(-5), "-0.000005");
        assert!(usd_to_units("ten").is_err());
    }

    #[test]
    fn bad_prices_are_refused() {
        assert!(matches!(
            Price::parse("abc", "1", ""),
            Err(PriceError::NotDecimal(_))
        ));
        assert!(matches!(
            Price::parse("-1", "1", ""),
            Err(PriceError::Negative(_))
        ));
        for (_, i, o, c) in seed_prices() {
            assert!(Price::parse(i, o, c).is_ok());
        }
        for (m, c) in seed_per_call() {
            assert!(seed_prices().iter().any(|(s, ..)| s == m));
            assert!(p("0", "0", "").with_per_call(c).is_ok());
        }
        assert!(matches!(
            p("0", "0", "").with_per_call("-1"),
            Err(PriceError::Negative(_))
        ));
    }

    #[test]
    fn per_call_cost_adds_calls_and_rounds_once() {
        let price = p("0.15", "0.6", "").with_per_call("0.04").unwrap();
        // 3 calls × $0.04 = 120000 units
        assert_eq!(
            cost_units_calls(&price, Decimal::ONE, Usage::default(), 3),
            120_000
        );
        // tokens + calls, ratio 1.5, rounded once: (0.45 + 40000) × 1.5 = 60000.675 → 60001
        let u = Usage {
            prompt: 3,
            completion: 0,
            cached: 0,
            cache_write: 0,
        };
        assert_eq!(
            cost_units_calls(&price, parse_decimal("1.5").unwrap(), u, 1),
            60_001
        );
        // no per-call price: calls add nothing; cost_units ignores per_call
        let plain = p("0.15", "0.6", "");
        assert_eq!(cost_units_calls(&plain, Decimal::ONE, u, 5), 0);
        assert_eq!(cost_units(&price, Decimal::ONE, u), 0);
        assert_eq!(price.with_per_call("").unwrap().per_call, None);
    }
}
