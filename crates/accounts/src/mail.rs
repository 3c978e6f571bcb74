//! Sending e-mail over SMTP (verification links, password resets, notices).
//!
//! [`Mailer`] wraps lettre's async SMTP transport (tokio, rustls with the `ring` provider and
//! the Mozilla root certificates from `webpki-roots`). Every send opens a fresh connection:
//! account e-mail is rare, and a fresh connection means a changed password or a restarted
//! relay is picked up without stale pooled connections.
//!
//! Errors are [`MailError`]s whose messages say what an operator should change in the
//! `smtp` settings (host and port, TLS mode, credentials, sender address).
//!
//! [`Template`] builds the localized subject and text of each account e-mail from
//! [`crate::i18n`].

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::i18n::{Locale, t};

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsMode {
    /// Plain text, no TLS at all. Only for a relay on the same host or a trusted network
    /// (and for tests): the password and the mail cross the network readable.
    #[serde(rename = "none", alias = "plain", alias = "off")]
    None,
    /// Connect in plain text, then upgrade with STARTTLS before logging in; fails if the
    /// server does not offer STARTTLS. The usual mode on port 587 (and 25).
    #[default]
    #[serde(rename = "starttls", alias = "start_tls", alias = "start-tls")]
    StartTls,
    /// TLS from the first byte ("implicit TLS", SMTPS). The usual mode on port 465.
    #[serde(rename = "tls", alias = "smtps", alias = "ssl", alias = "implicit")]
    Tls,
}

impl TlsMode {
    /// The spelling used in the settings: `none`, `starttls` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::StartTls => "starttls",
            TlsMode::Tls => "tls",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_port() -> u16 {
    587
}

fn default_timeout_secs() -> u64 {
    30
}

/// Settings of the outgoing mail server.
///
/// ```toml
/// [smtp]
/// host = "smtp.example.com"
/// port = 587              # default; 465 goes with tls = "tls"
/// tls = "starttls"        # "none" | "starttls" (default) | "tls"
/// username = "noreply@example.com"
/// password = "app-password"
/// from = "Example <noreply@example.com>"
/// timeout_secs = 30       # default
/// ```
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Host name or IP address of the SMTP server. With TLS the server's certificate must
    /// be valid for this name.
    pub host: String,
    /// Default 587 (submission with STARTTLS). Use 465 with [`TlsMode::Tls`].
    #[serde(default = "default_port")]
    pub port: u16,
    /// Default [`TlsMode::StartTls`].
    #[serde(default)]
    pub tls: TlsMode,
    /// Login name; set both `username` and `password`, or neither (no AUTH).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, `Name <address>` or a bare address. Non-ASCII names are fine.
    pub from: String,
    /// Limit for connecting and for each step of the SMTP conversation. Default 30.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The name this host gives in EHLO. Default `localhost`; some servers want a real name.
    #[serde(default)]
    pub helo_name: Option<String>,
}

impl SmtpConfig {
    /// Settings for `host` with the defaults: port 587, STARTTLS, no login, 30 s timeout.
    pub fn new(host: impl Into<String>, from: impl Into<String>) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port: default_port(),
            tls: TlsMode::default(),
            username: None,
            password: None,
            from: from.into(),
            timeout_secs: default_timeout_secs(),
            helo_name: None,
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout_secs", &self.timeout_secs)
            .field("helo_name", &self.helo_name)
            .finish()
    }
}

/// Why an e-mail was not sent. The messages name the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The settings cannot work as given; nothing was attempted.
    #[error("invalid SMTP settings: {0}")]
    Config(String),
    /// A recipient address that is not an e-mail address.
    #[error("`{address}` is not a valid e-mail address ({reason})")]
    Address { address: String, reason: String },
    /// The message itself could not be put together.
    #[error("could not build the e-mail: {0}")]
    Build(String),
    /// No connection: wrong host or port, server down, DNS or firewall.
    #[error("could not connect to the SMTP server {server}: {detail}; {hint}")]
    Connect {
        server: String,
        detail: String,
        hint: String,
    },
    /// The server went silent.
    #[error("the SMTP server {server} did not answer within {secs} s; {hint}")]
    Timeout {
        server: String,
        secs: u64,
        hint: String,
    },
    /// TLS could not be set up (wrong TLS mode for the port, untrusted certificate, …).
    #[error("TLS with the SMTP server {server} failed: {detail}; {hint}")]
    Tls {
        server: String,
        detail: String,
        hint: String,
    },
    /// The login was refused, required but not configured, or impossible.
    #[error("the SMTP server {server} refused the login: {detail}; {hint}")]
    Auth {
        server: String,
        detail: String,
        hint: String,
    },
    /// The server refused the sender, a recipient or the message.
    #[error("the SMTP server {server} refused the e-mail: {detail}; {hint}")]
    Rejected {
        server: String,
        /// The SMTP reply code, e.g. 550.
        code: Option<u16>,
        detail: String,
        hint: String,
    },
    /// Anything else that went wrong in the SMTP conversation.
    #[error("the SMTP conversation with {server} failed: {detail}")]
    Protocol { server: String, detail: String },
}

impl MailError {
    /// Whether sending again later may succeed without changing the settings (network
    /// trouble, time-outs, 4xx replies).
    pub fn is_transient(&self) -> bool {
        match self {
            MailError::Connect { .. } | MailError::Timeout { .. } | MailError::Protocol { .. } => {
                true
            }
            MailError::Rejected { code, .. } => code.is_some_and(|c| (400..500).contains(&c)),
            _ => false,
        }
    }
}

/// Sends e-mail through one SMTP server. Cheap to share behind an `Arc`; each
/// [`Mailer::send`] uses its own connection.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
    port: u16,
    tls: TlsMode,
    has_credentials: bool,
    timeout_secs: u64,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server())
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("has_credentials", &self.has_credentials)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks the settings and prepares the transport; does not connect yet (see
    /// [`Mailer::check`]).
    pub fn new(cfg: &SmtpConfig) -> Result<Mailer, MailError> {
        let host = cfg.host.trim().to_string();
        if host.is_empty() {
            return Err(MailError::Config(
                "smtp.host is empty: set it to the name of your mail server, e.g. smtp.example.com"
                    .into(),
            ));
        }
        if cfg.port == 0 {
            return Err(MailError::Config(
                "smtp.port is 0: use 587 (tls = \"starttls\"), 465 (tls = \"tls\") or 25".into(),
            ));
        }
        if cfg.timeout_secs == 0 {
            return Err(MailError::Config(
                "smtp.timeout_secs is 0: use a limit such as 30".into(),
            ));
        }
        let from: Mailbox = cfg.from.trim().parse().map_err(|e| {
            MailError::Config(format!(
                "smtp.from `{}` is not a sender address ({e}): write `Name <address@example.com>` or `address@example.com`",
                cfg.from
            ))
        })?;
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(user), Some(pass)) if !user.is_empty() => {
                Some(Credentials::new(user.clone(), pass.clone()))
            }
            (None, None) => None,
            (Some(user), None) if !user.is_empty() => {
                return Err(MailError::Config(
                    "smtp.username is set but smtp.password is not: set both, or neither for a server without login".into(),
                ));
            }
            (Some(_), _) => {
                return Err(MailError::Config(
                    "smtp.username is empty: set the login name, or remove both smtp.username and smtp.password".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(MailError::Config(
                    "smtp.password is set but smtp.username is not: set both, or neither for a server without login".into(),
                ));
            }
        };

        let tls = match cfg.tls {
            TlsMode::None => Tls::None,
            TlsMode::StartTls => Tls::Required(tls_parameters(&host)?),
            TlsMode::Tls => Tls::Wrapper(tls_parameters(&host)?),
        };
        let hello = match cfg.helo_name.as_deref().map(str::trim) {
            None | Some("") => ClientId::Domain("localhost".into()),
            Some(name) => match name.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
                Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
                Err(_) => ClientId::Domain(name.to_string()),
            },
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(cfg.port)
            .tls(tls)
            .hello_name(hello)
            .timeout(Some(Duration::from_secs(cfg.timeout_secs)));
        let has_credentials = credentials.is_some();
        if let Some(c) = credentials {
            builder = builder.credentials(c);
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            host,
            port: cfg.port,
            tls: cfg.tls,
            has_credentials,
            timeout_secs: cfg.timeout_secs,
        })
    }

    /// The sender every e-mail goes out as.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Connects, sets up TLS, logs in and says goodbye, without sending anything: the quick
    /// test for a settings page.
    pub async fn check(&self) -> Result<(), MailError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(MailError::Protocol {
                server: self.server(),
                detail: "the server did not answer NOOP after the login".into(),
            }),
            Err(e) => Err(self.classify(&e)),
        }
    }

    /// Sends one e-mail to `to` (`address` or `Name <address>`). With `html_body` the mail
    /// is `multipart/alternative` with the text first; otherwise plain UTF-8 text. Headers
    /// with non-ASCII text are encoded as RFC 2047 encoded words by lettre.
    pub async fn send(
        &self,
        to: &str,
        subject: &str,
        text_body: &str,
        html_body: Option<&str>,
    ) -> Result<(), MailError> {
        let to_box: Mailbox = to.trim().parse().map_err(|e| MailError::Address {
            address: to.to_string(),
            reason: format!("{e}"),
        })?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to_box)
            .subject(subject)
            .message_id(Some(self.message_id()));
        let message = match html_body {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                text_body.to_string(),
                html.to_string(),
            )),
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(text_body.to_string()),
        }
        .map_err(|e| MailError::Build(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| self.classify(&e))
    }

    fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn message_id(&self) -> String {
        let n: u128 = rand::rng().random();
        format!("<{n:032x}@{}>", self.from.email.domain())
    }

    /// Turns lettre's error into one that tells the operator what to change.
    fn classify(&self, e: &SmtpError) -> MailError {
        let server = self.server();
        let port = self.port;
        let mode_hint = format!(
            "smtp.tls is \"{}\" on port {port}; port 465 expects tls = \"tls\", ports 587 and 25 expect tls = \"starttls\"",
            self.tls
        );

        if let Some(code) = e.status() {
            let code_num: u16 = code.to_string().parse().unwrap_or(0);
            let text = e.source().map(|s| s.to_string()).unwrap_or_default();
            let detail = format!("{code_num} {text}").trim().to_string();
            return self.classify_reply(server, code_num, detail);
        }

        let detail = innermost(e);
        if e.is_timeout() {
            let hint = match self.tls {
                TlsMode::Tls => {
                    "check smtp.host and smtp.port and that no firewall drops the connection"
                        .to_string()
                }
                _ => format!(
                    "check smtp.host and smtp.port and that no firewall drops the connection; if port {port} expects TLS from the start (usually 465), set smtp.tls = \"tls\""
                ),
            };
            return MailError::Timeout {
                server,
                secs: self.timeout_secs,
                hint,
            };
        }
        if e.is_tls() {
            return MailError::Tls {
                server,
                detail,
                hint: mode_hint,
            };
        }
        if e.is_client() {
            if detail.contains("STARTTLS") {
                return MailError::Tls {
                    server,
                    detail: "the server does not offer STARTTLS".into(),
                    hint: format!(
                        "{mode_hint}; use tls = \"none\" only for a relay on a trusted network"
                    ),
                };
            }
            if detail.contains("authentication mechanism") {
                return MailError::Auth {
                    server,
                    detail: "the server offers no login method usable here (PLAIN or LOGIN)".into(),
                    hint: if self.tls == TlsMode::None {
                        "many servers offer login only over TLS: set smtp.tls = \"starttls\" (port 587) or \"tls\" (port 465); or remove smtp.username and smtp.password if this server needs no login".into()
                    } else {
                        "remove smtp.username and smtp.password if this server needs no login, or ask its administrator to enable SMTP AUTH PLAIN or LOGIN".into()
                    },
                };
            }
            return MailError::Protocol { server, detail };
        }

        // Connection-level problems carry an io::Error somewhere in the chain; TLS
        // handshake failures are io::Errors wrapping a rustls::Error.
        if let Some(tls_err) = find_source::<rustls::Error>(e) {
            return MailError::Tls {
                server,
                detail: tls_err.to_string(),
                hint: self.tls_hint(tls_err, &mode_hint),
            };
        }
        let io = find_source::<std::io::Error>(e);
        let lowered = detail.to_ascii_lowercase();
        if let Some(io) = io {
            use std::io::ErrorKind as K;
            let hint = match io.kind() {
                K::ConnectionRefused => Some(format!(
                    "nothing accepts connections on port {port} of {}: check smtp.host and smtp.port (usually 587 with tls = \"starttls\", or 465 with tls = \"tls\") and that the mail server is running",
                    self.host
                )),
                K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => Some(format!(
                    "check smtp.host and that this machine can reach it (routing, firewall, outgoing port {port} blocked by the hosting provider)"
                )),
                K::TimedOut => {
                    return MailError::Timeout {
                        server,
                        secs: self.timeout_secs,
                        hint: format!(
                            "check smtp.host and smtp.port and that no firewall drops outgoing connections to port {port}"
                        ),
                    };
                }
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    Some(format!("the server closed the connection; {mode_hint}"))
                }
                _ => None,
            };
            if let Some(hint) = hint {
                return MailError::Connect {
                    server,
                    detail: io_detail(io),
                    hint,
                };
            }
        }
        if lowered.contains("lookup") || lowered.contains("resolve") || lowered.contains("dns") {
            return MailError::Connect {
                server,
                detail,
                hint: "check that smtp.host is spelled correctly and resolves from this machine"
                    .into(),
            };
        }
        if io.is_some() || lowered.contains("connect") {
            return MailError::Connect {
                server,
                detail,
                hint: format!(
                    "check smtp.host and smtp.port and that no firewall blocks outgoing connections to port {port}"
                ),
            };
        }
        if e.is_response() {
            return MailError::Protocol {
                server,
                detail: format!("unexpected reply: {detail}; {mode_hint}"),
            };
        }
        MailError::Protocol { server, detail }
    }

    fn classify_reply(&self, server: String, code: u16, detail: String) -> MailError {
        let auth = |hint: String| MailError::Auth {
            server: server.clone(),
            detail: detail.clone(),
            hint,
        };
        match code {
            535 | 534 | 538 | 454 if self.has_credentials => auth(
                "check smtp.username and smtp.password (many providers, e.g. Gmail or Microsoft 365, need an app password or SMTP AUTH enabled for the mailbox)".into(),
            ),
            530 if !self.has_credentials => auth(format!(
                "the server requires a login: set smtp.username and smtp.password{}",
                if self.tls == TlsMode::None {
                    "; if it asks for STARTTLS first, set smtp.tls = \"starttls\""
                } else {
                    ""
                }
            )),
            530 => auth(if self.tls == TlsMode::None {
                "the server wants TLS before the login: set smtp.tls = \"starttls\" (port 587) or \"tls\" (port 465)".into()
            } else {
                "check smtp.username and smtp.password".into()
            }),
            550 | 551 | 553 | 554 | 555 | 556 => MailError::Rejected {
                server,
                code: Some(code),
                detail,
                hint: format!(
                    "check that smtp.from ({}) is an address this SMTP account may send as, and that the recipient address is right",
                    self.from.email
                ),
            },
            552 => MailError::Rejected {
                server,
                code: Some(code),
                detail,
                hint: "the message is too large or the recipient's mailbox is full".into(),
            },
            400..=499 => MailError::Rejected {
                server,
                code: Some(code),
                detail,
                hint: "the server reported a temporary problem; try again later".into(),
            },
            _ => MailError::Rejected {
                server,
                code: Some(code),
                detail,
                hint: "see the server's message; the server's administrator can tell more from its logs".into(),
            },
        }
    }

    fn tls_hint(&self, e: &rustls::Error, mode_hint: &str) -> String {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
                "the server's certificate is not signed by a publicly trusted authority (self-signed or private CA); install a certificate from a public CA on the mail server, or use tls = \"none\" only for a relay on a trusted network".into()
            }
            rustls::Error::InvalidCertificate(C::NotValidForName)
            | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
                "the server's certificate is not valid for `{}`: set smtp.host to the name on the certificate",
                self.host
            ),
            rustls::Error::InvalidCertificate(C::Expired)
            | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
                "the server's certificate has expired; renew it on the mail server".into()
            }
            rustls::Error::InvalidCertificate(_) => {
                "the server's certificate was refused; fix the certificate on the mail server".into()
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!("the server does not speak TLS on this port; {mode_hint}")
            }
            _ => mode_hint.to_string(),
        }
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, MailError> {
    TlsParameters::new(host.to_string()).map_err(|e| {
        MailError::Config(format!(
            "cannot use TLS with smtp.host `{host}`: {}",
            innermost(&e)
        ))
    })
}

/// The first error of type `T` in `e`'s source chain (including io::Errors' inner errors).
fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = inner.downcast_ref::<T>()
        {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// The message of the deepest error in the chain (lettre's own Display adds only a kind).
fn innermost(e: &(dyn StdError + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn io_detail(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// Localized subjects and texts of the account e-mails, as `(subject, text)`.
///
/// `site` is the product name shown to users; links should be absolute `https://` URLs.
pub struct Template;

impl Template {
    /// "Confirm your e-mail address": `link` confirms it and is valid for `hours`.
    pub fn verify_email(locale: Locale, site: &str, link: &str, hours: u32) -> (String, String) {
        let expiry = Self::hours(locale, hours);
        let args = [("site", site), ("link", link), ("expiry", expiry.as_str())];
        (
            t(locale, "email-verify-subject", &args),
            t(locale, "email-verify-body", &args),
        )
    }

    /// "Reset your password": `link` leads to the new-password form and is valid for
    /// `hours`; the text tells people who did not ask for it to ignore it.
    pub fn reset_password(locale: Locale, site: &str, link: &str, hours: u32) -> (String, String) {
        let expiry = Self::hours(locale, hours);
        let args = [("site", site), ("link", link), ("expiry", expiry.as_str())];
        (
            t(locale, "email-reset-subject", &args),
            t(locale, "email-reset-body", &args),
        )
    }

    /// "Your password was changed", with what to do if it was not the user.
    pub fn password_changed(locale: Locale, site: &str) -> (String, String) {
        let args = [("site", site)];
        (
            t(locale, "email-password-changed-subject", &args),
            t(locale, "email-password-changed-body", &args),
        )
    }

    /// "New sign-in to your account" from `device` (e.g. "Firefox on Windows") at `ip`,
    /// at `time` (formatted by the caller, with its time zone).
    pub fn new_sign_in(
        locale: Locale,
        site: &str,
        device: &str,
        ip: &str,
        time: &str,
    ) -> (String, String) {
        let args = [
            ("site", site),
            ("device", device),
            ("ip", ip),
            ("time", time),
        ];
        (
            t(locale, "email-new-sign-in-subject", &args),
            t(locale, "email-new-sign-in-body", &args),
        )
    }

    /// The test e-mail of the SMTP settings page ("the SMTP settings work").
    pub fn test_message(locale: Locale, site: &str) -> (String, String) {
        let args = [("site", site)];
        (
            t(locale, "email-test-subject", &args),
            t(locale, "email-test-body", &args),
        )
    }

    /// "24 hours" in `locale`, with the right plural form.
    pub fn hours(locale: Locale, hours: u32) -> String {
        let key = if locale.plural_one(u64::from(hours)) {
            "hours-one"
        } else {
            "hours-other"
        };
        t(locale, key, &[("hours", &hours.to_string())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_redaction() {
        let cfg: SmtpConfig =
            serde_json::from_str(r#"{"host":"smtp.example.com","from":"Ex <a@example.com>"}"#)
                .unwrap();
        assert_eq!(cfg.port, 587);
        assert_eq!(cfg.tls, TlsMode::StartTls);
        assert_eq!(cfg.timeout_secs, 30);
        assert_eq!(
            cfg,
            SmtpConfig::new("smtp.example.com", "Ex <a@example.com>")
        );
        for (s, mode) in [
            ("none", TlsMode::None),
            ("starttls", TlsMode::StartTls),
            ("tls", TlsMode::Tls),
            ("smtps", TlsMode::Tls),
        ] {
            let v: TlsMode = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(v, mode);
        }
        assert!(serde_json::from_str::<TlsMode>("\"maybe\"").is_err());
        let mut cfg = cfg;
        cfg.password = Some("hunter2".into());
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("redacted"),
            "{dbg}"
        );
    }

    #[test]
    fn bad_settings_are_explained() {
        let ok = SmtpConfig::new("smtp.example.com", "Example <noreply@example.com>");
        assert!(Mailer::new(&ok).is_ok());
        let mut tls = ok.clone();
        tls.tls = TlsMode::Tls;
        tls.port = 465;
        assert!(Mailer::new(&tls).is_ok());

        let check = |cfg: SmtpConfig, needle: &str| {
            let err = Mailer::new(&cfg).unwrap_err();
            assert!(matches!(err, MailError::Config(_)), "{err:?}");
            assert!(err.to_string().contains(needle), "{err}");
        };
        let mut c = ok.clone();
        c.host = " ".into();
        check(c, "smtp.host is empty");
        let mut c = ok.clone();
        c.from = "not an address".into();
        check(c, "smtp.from `not an address`");
        let mut c = ok.clone();
        c.username = Some("u".into());
        check(c, "smtp.password is not");
        let mut c = ok.clone();
        c.password = Some("p".into());
        check(c, "smtp.username is not");
        let mut c = ok.clone();
        c.port = 0;
        check(c, "smtp.port is 0");
    }

    #[test]
    fn templates_fill_in_everything() {
        for locale in Locale::ALL {
            let (subject, body) =
                Template::verify_email(locale, "Acme AI", "https://acme.test/v?t=abc", 24);
            assert!(subject.contains("Acme AI"), "{locale}: {subject}");
            assert!(
                body.contains("https://acme.test/v?t=abc"),
                "{locale}: {body}"
            );
            assert!(body.contains("24"), "{locale}: {body}");
            let (subject, body) =
                Template::reset_password(locale, "Acme AI", "https://acme.test/r?t=x", 2);
            assert!(subject.contains("Acme AI"));
            assert!(body.contains("https://acme.test/r?t=x") && body.contains('2'));
            let (s, b) = Template::password_changed(locale, "Acme AI");
            assert!(s.contains("Acme AI") && b.contains("Acme AI"));
            let (s, b) =
                Template::new_sign_in(locale, "Acme AI", "Firefox on Linux", "203.0.113.9", "T");
            assert!(s.contains("Acme AI") && b.contains("Firefox on Linux"));
            assert!(b.contains("203.0.113.9"));
            let (s, b) = Template::test_message(locale, "Acme AI");
            assert!(s.contains("Acme AI") && b.contains("SMTP"));
            for text in [&s, &b, &subject, &body] {
                assert!(
                    !text.contains("{ $"),
                    "{locale}: unfilled placeholder in {text}"
                );
            }
        }
        assert_eq!(Template::hours(Locale::En, 1), "1 hour");
        assert_eq!(Template::hours(Locale::En, 24), "24 hours");
        assert_eq!(Template::hours(Locale::PtBr, 1), "1 hora");
        assert_eq!(Template::hours(Locale::PtBr, 48), "48 horas");
        assert_eq!(Template::hours(Locale::Ja, 24), "24時間");
        let (s, b) = Template::verify_email(Locale::ZhCn, "Acme", "https://x.test/", 24);
        assert_eq!(s, "请验证您的 Acme 邮箱地址");
        assert!(b.contains("该链接在 24 小时内有效"), "{b}");
    }
}
