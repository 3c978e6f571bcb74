//! Identity rules: API keys and access tokens (random, shown once, stored
//! as SHA-256), password hashing (argon2id), roles, and the IP allow-list
//! of a key.

pub mod i18n;
pub mod mail;
pub mod oidc;
pub mod totp;

use std::net::IpAddr;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use sha2::{Digest, Sha256};

pub const ROLE_ROOT: &str = "root";
pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_USER: &str = "user";
/// A user in managed mode: has their own upstream channels.
pub const ROLE_USER_ROOT: &str = "user_root";

/// An argon2id hash of nothing in particular, verified against when a login
/// names no account, so the answer takes as long as for a real one.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

/// True for roles that may use the operator's management API.
pub fn is_admin(role: &str) -> bool {
    role == ROLE_ROOT || role == ROLE_ADMIN
}

pub fn valid_role(role: &str) -> bool {
    matches!(role, ROLE_ROOT | ROLE_ADMIN | ROLE_USER)
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new API key: `sk-` and 48 random alphanumerics (≈285 bits).
pub fn generate_api_key() -> String {
    format!("sk-{}", random_string(48))
}

/// A new management access token.
pub fn generate_access_token() -> String {
    format!("gap-{}", random_string(40))
}

/// A random password for the first administrator.
pub fn generate_password() -> String {
    random_string(20)
}

/// SHA-256 of a secret, as raw bytes (the in-memory index).
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// SHA-256 of a secret, as lowercase hex (the stored form).
pub fn secret_hash(secret: &str) -> String {
    hex::encode(secret_digest(secret))
}

/// What lists show of a key: its start and end.
pub fn key_hint(key: &str) -> String {
    if key.len() < 12 {
        return "…".into();
    }
    format!("{}…{}", &key[..7], &key[key.len() - 4..])
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(
        "`{0}` is not an IP address or CIDR range (examples: 203.0.113.7, 10.0.0.0/8, 2001:db8::/32)"
    )]
    BadCidr(String),
    #[error("username must be 1 to 64 letters, digits, `.`, `_`, `-` or `@`")]
    BadUsername,
    #[error("password must be at least 8 characters")]
    WeakPassword,
}

pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// [`hash_password`] on Tokio's blocking pool. Argon2 takes tens of
/// milliseconds of CPU; on a runtime thread it would hold up every request
/// and stream sharing that thread (all of them, with one worker).
pub async fn hash_password_off_thread(password: &str) -> Result<String, AccountError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .unwrap_or_else(|e| Err(AccountError::Hash(e.to_string())))
}

/// [`verify_password`] on Tokio's blocking pool (see
/// [`hash_password_off_thread`]).
pub async fn verify_password_off_thread(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    match argon2::PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn check_username(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadUsername)
    }
}

pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < 8 {
        Err(AccountError::WeakPassword)
    } else {
        Ok(())
    }
}

/// A parsed allow-list of addresses and ranges.
#[derive(Clone, Debug, Default)]
pub struct IpAllowList {
    nets: Vec<ipnet::IpNet>,
}

impl IpAllowList {
    /// Parses entries such as `203.0.113.7` or `10.0.0.0/8`.
    pub fn parse(entries: &[String]) -> Result<IpAllowList, AccountError> {
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.trim();
            let net = if let Ok(n) = e.parse::<ipnet::IpNet>() {
                n
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                ipnet::IpNet::from(ip)
            } else {
                return Err(AccountError::BadCidr(e.to_string()));
            };
            nets.push(net);
        }
        Ok(IpAllowList { nets })
    }

    /// An empty list allows every address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_stably() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 51);
        assert_eq!(secret_hash("abc").len(), 64);
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(key_hint(&a).chars().count(), 12);
    }

    #[test]
    fn passwords_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn ip_allow_list() {
        let l = IpAllowList::parse(&["10.0.0.0/8".into(), "203.0.113.7".into()]).unwrap();
        assert!(l.allows("10.1.2.3".parse().unwrap()));
        assert!(l.allows("203.0.113.7".parse().unwrap()));
        assert!(l.allows("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!l.allows("203.0.113.8".parse().unwrap()));
        assert!(IpAllowList::default().allows("1.2.3.4".parse().unwrap()));
        assert!(IpAllowList::parse(&["nonsense".into()]).is_err());
    }

    #[test]
    fn usernames() {
        assert!(check_username("alice_01@x.io").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("bob smith").is_err());
    }
}

pub mod ops;
