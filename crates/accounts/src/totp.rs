//! Time-based one-time passwords for two-factor sign-in, as authenticator apps
//! (Google Authenticator, 1Password, Aegis, …) compute them: RFC 6238 TOTP over
//! RFC 4226 HOTP with HMAC-SHA1, 6 digits and a 30-second step.
//!
//! The secret is 20 random bytes, shown to the user once as base32 (RFC 4648,
//! no padding) inside an `otpauth://` URI (QR code). [`verify`] accepts the
//! code of the current step and of one step either side (clock skew), and
//! refuses any step at or before the last one used, so a code cannot be
//! replayed; the caller stores the step it returns.
//!
//! Recovery codes are ten single-use codes such as `k7vm-q2xd-9hbt`, stored as
//! SHA-256 hex like API keys ([`crate::secret_hash`]).

use hmac::{KeyInit, Mac};
use rand::Rng;

use crate::oidc::percent_encode;

/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Seconds per step.
pub const PERIOD: u64 = 30;
/// Bytes of a new secret (160 bits, the HMAC-SHA1 block-size recommendation of RFC 4226).
pub const SECRET_LEN: usize = 20;
/// Steps accepted either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// How many recovery codes a user gets.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// A new random secret of [`SECRET_LEN`] bytes.
pub fn generate_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_LEN];
    rand::rng().fill(&mut secret[..]);
    secret
}

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, upper case, without `=` padding (the form authenticator apps expect).
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes RFC 4648 base32 as users paste it: either case, spaces, dashes and
/// trailing `=` padding are ignored. `None` for any other character, or for
/// a length no encoder produces.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    let mut symbols = 0usize;
    let body = text.trim_end_matches(|c: char| c == '=' || c.is_whitespace());
    for c in body.chars() {
        if c.is_whitespace() || c == '-' {
            continue;
        }
        let v = match c.to_ascii_uppercase() {
            u @ 'A'..='Z' => u as u32 - 'A' as u32,
            d @ '2'..='7' => d as u32 - '2' as u32 + 26,
            _ => return None,
        };
        symbols += 1;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    // Valid unpadded lengths leave 0, 2, 4, 5 or 7 symbols in the last group of 8.
    if matches!(symbols % 8, 1 | 3 | 6) {
        return None;
    }
    Some(out)
}

/// RFC 4226 HOTP: the `digits`-digit code (zero-padded) for `counter`.
/// `digits` is clamped to 1..=9.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let digits = digits.clamp(1, 9);
    let mut mac = match hmac::Hmac::<sha1::Sha1>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm is never taken.
        Err(_) => return "0".repeat(digits as usize),
    };
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let binary = (u32::from(hash[offset] & 0x7f) << 24)
        | (u32::from(hash[offset + 1]) << 16)
        | (u32::from(hash[offset + 2]) << 8)
        | u32::from(hash[offset + 3]);
    let code = binary % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// The step (counter) of a Unix time.
pub fn step_at(unix_time: u64) -> u64 {
    unix_time / PERIOD
}

/// RFC 6238 TOTP: the `digits`-digit code at `unix_time` (30-second steps).
pub fn totp_at(secret: &[u8], unix_time: u64, digits: u32) -> String {
    hotp(secret, step_at(unix_time), digits)
}

/// The usual 6-digit code at `unix_time`.
pub fn code_at(secret: &[u8], unix_time: u64) -> String {
    totp_at(secret, unix_time, DIGITS)
}

/// Seconds the code of `unix_time` stays current.
pub fn seconds_left(unix_time: u64) -> u64 {
    PERIOD - unix_time % PERIOD
}

/// The `otpauth://totp/…` URI authenticator apps import (usually as a QR code).
/// `issuer` is the site name, `account` the user's name or email.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        percent_encode(issuer),
        percent_encode(account),
        base32_encode(secret),
        percent_encode(issuer),
    )
}

/// Checks a 6-digit code typed by the user (spaces and dashes allowed, as in
/// `123 456`) against the steps `now - 1 ..= now + 1`.
///
/// Returns the matched step, which the caller must store and pass back as
/// `last_used_step` next time: a step at or before `last_used_step` is refused,
/// so each code works once. `None` when the code is malformed, wrong, or replayed.
pub fn verify(
    secret: &[u8],
    code: &str,
    unix_now: u64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    let code: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(unix_now);
    let mut found = None;
    // Check every candidate step so the time taken does not tell which one matched.
    for step in now.saturating_sub(SKEW_STEPS)..=now.saturating_add(SKEW_STEPS) {
        let candidate = hotp(secret, step, DIGITS);
        if constant_time_eq(candidate.as_bytes(), code.as_bytes())
            && last_used_step.is_none_or(|last| step > last)
            && found.is_none()
        {
            found = Some(step);
        }
    }
    found
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Letters and digits that cannot be mistaken for one another (no `0 o 1 l i`).
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// [`RECOVERY_CODE_COUNT`] new recovery codes shaped `xxxx-xxxx-xxxx` (≈59 bits each).
/// Show them once; store [`recovery_code_hash`] of each.
pub fn generate_recovery_codes() -> Vec<String> {
    let mut rng = rand::rng();
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let mut code = String::with_capacity(14);
            for i in 0..12 {
                if i > 0 && i % 4 == 0 {
                    code.push('-');
                }
                code.push(RECOVERY_ALPHABET[rng.random_range(0..RECOVERY_ALPHABET.len())] as char);
            }
            code
        })
        .collect()
}

/// The form a recovery code is hashed in: lower case, without spaces or dashes,
/// so `ABCD EFGH-ijkl` and `abcd-efgh-ijkl` are the same code.
pub fn normalize_recovery_code(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The stored form of a recovery code: SHA-256 hex of its normalized form.
pub fn recovery_code_hash(code: &str) -> String {
    crate::secret_hash(&normalize_recovery_code(code))
}

/// The index in `stored_hashes` of the code the user typed, if it is one of
/// them. The caller removes (or marks used) that entry so it works once.
pub fn find_recovery_code(input: &str, stored_hashes: &[String]) -> Option<usize> {
    let normalized = normalize_recovery_code(input);
    if normalized.is_empty() {
        return None;
    }
    let hash = crate::secret_hash(&normalized);
    stored_hashes
        .iter()
        .position(|h| constant_time_eq(h.as_bytes(), hash.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc4226_appendix_d_hotp_vectors() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(
                hotp(RFC_SECRET, counter as u64, 6),
                *want,
                "counter {counter}"
            );
        }
    }

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let expected = [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ];
        for (time, want) in expected {
            assert_eq!(totp_at(RFC_SECRET, time, 8), want, "time {time}");
            // The 6-digit code is the last six digits of the 8-digit one.
            assert_eq!(code_at(RFC_SECRET, time), want[2..], "time {time}");
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc4648() {
        // RFC 4648 section 10 test vectors, without padding.
        let vectors = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(base32_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw 6ytb-oi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("MZXW1"), None);
        assert_eq!(base32_decode("M"), None);
        let secret = generate_secret();
        assert_eq!(secret.len(), SECRET_LEN);
        let text = base32_encode(&secret);
        assert_eq!(text.len(), 32);
        assert_eq!(base32_decode(&text).unwrap(), secret);
        assert_ne!(generate_secret(), secret);
    }

    #[test]
    fn otpauth_uri_is_percent_encoded() {
        let uri = otpauth_uri("GPT Proxy", "alice@example.com", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/GPT%20Proxy:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=GPT%20Proxy&algorithm=SHA1&digits=6&period=30"
        );
        assert!(otpauth_uri("a:b", "c", b"x").starts_with("otpauth://totp/a%3Ab:c?"));
    }

    #[test]
    fn verify_accepts_skew_and_refuses_replay() {
        let secret = generate_secret();
        let now = 1_700_000_015u64;
        let step = step_at(now);
        let current = code_at(&secret, now);
        assert_eq!(verify(&secret, &current, now, None), Some(step));
        // Replay of the same step is refused once it is stored.
        assert_eq!(verify(&secret, &current, now, Some(step)), None);
        // Spaces and dashes are tolerated.
        let spaced = format!("{} {}", &current[..3], &current[3..]);
        assert_eq!(verify(&secret, &spaced, now, None), Some(step));
        // One step behind and ahead are accepted; two are not.
        let prev = code_at(&secret, now - PERIOD);
        let next = code_at(&secret, now + PERIOD);
        let far = code_at(&secret, now - 2 * PERIOD);
        assert_eq!(verify(&secret, &prev, now, None), Some(step - 1));
        assert_eq!(verify(&secret, &next, now, None), Some(step + 1));
        if far != current && far != prev && far != next {
            assert_eq!(verify(&secret, &far, now, None), None);
        }
        // An older code cannot be used after a newer one.
        assert_eq!(verify(&secret, &prev, now, Some(step)), None);
        assert_eq!(verify(&secret, &next, now, Some(step)), Some(step + 1));
        // Malformed input.
        assert_eq!(verify(&secret, "12345", now, None), None);
        assert_eq!(verify(&secret, "1234567", now, None), None);
        assert_eq!(verify(&secret, "12a456", now, None), None);
        assert_eq!(verify(&secret, "", now, None), None);
        // A code of none of the three steps.
        let wrong = (0..1_000_000u32)
            .map(|n| format!("{n:06}"))
            .find(|c| (step - 1..=step + 1).all(|s| hotp(&secret, s, 6) != *c))
            .unwrap();
        assert_eq!(verify(&secret, &wrong, now, None), None);
        assert_eq!(seconds_left(now), 25);
    }

    #[test]
    fn recovery_codes() {
        let codes = generate_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        for c in &codes {
            assert_eq!(c.len(), 14);
            let parts: Vec<&str> = c.split('-').collect();
            assert_eq!(parts.len(), 3);
            assert!(parts.iter().all(|p| p.len() == 4));
            assert!(
                c.bytes()
                    .all(|b| b == b'-' || RECOVERY_ALPHABET.contains(&b))
            );
        }
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());

        let stored: Vec<String> = codes.iter().map(|c| recovery_code_hash(c)).collect();
        assert_eq!(stored[0].len(), 64);
        let typed = format!(" {} ", codes[3].to_uppercase().replace('-', " "));
        assert_eq!(find_recovery_code(&typed, &stored), Some(3));
        assert_eq!(
            find_recovery_code(&codes[3].replace('-', ""), &stored),
            Some(3)
        );
        assert_eq!(find_recovery_code("aaaa-bbbb-cccc", &stored), None);
        assert_eq!(find_recovery_code(" - ", &stored), None);
        assert_eq!(normalize_recovery_code("AbCd-EFGH ijkl"), "abcdefghijkl");
    }
}
