//! SMTP sink stand-in: accepts mail over a real SMTP conversation (RFC 5321) on
//! `127.0.0.1` and keeps every message for the test to read.
//!
//! The sink speaks plain TCP only. It does **not** offer STARTTLS (nor implicit TLS), so a
//! client must be configured for plaintext (`TlsMode::None` in `accounts::mail`); a client
//! that insists on STARTTLS fails, which is itself a useful test.
//!
//! Conversation: `220` greeting; `EHLO` (multi-line `250` advertising `AUTH PLAIN LOGIN`,
//! `8BITMIME`, `SMTPUTF8`) or `HELO`; `AUTH PLAIN` / `AUTH LOGIN` (with or without an
//! initial response); `MAIL FROM`, `RCPT TO`, `DATA` (`354`, ends at `CRLF.CRLF`,
//! dot-unstuffed), `RSET`, `NOOP`, `QUIT` (`221`); anything else gets `502`.
//!
//! Without credentials ([`SmtpSink::start`]) any login is accepted and none is needed. With
//! credentials ([`SmtpSink::start_with_auth`]) `MAIL` before a successful login gets `530`,
//! and a wrong login gets `535`.
//!
//! [`ReceivedMail`] keeps the raw message and decodes what tests need: headers (with RFC
//! 2047 encoded words), and the text or HTML body from quoted-printable or base64, inside
//! `multipart/*` or not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The name the sink gives itself in replies.
const HOSTNAME: &str = "mock-smtp.test";

/// Longest command line or message line accepted (RFC 5321 allows 512 and 1000 octets;
/// this is generous).
const MAX_LINE: u64 = 64 * 1024;

/// One message accepted by the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM:<…>`), without the angle brackets; empty for `<>`.
    pub from: String,
    /// The envelope recipients (`RCPT TO:<…>`), in order.
    pub to: Vec<String>,
    /// The message as received after `DATA`, dot-unstuffed, with its CRLF line ends, without
    /// the final `.` line.
    pub data: String,
    /// The user name of a successful `AUTH` in this session, if any.
    pub auth_user: Option<String>,
    /// The name the client gave in `EHLO`/`HELO`.
    pub helo: String,
}

impl ReceivedMail {
    /// The raw value of the first top-level header `name` (case-insensitive), unfolded,
    /// still encoded.
    pub fn header(&self, name: &str) -> Option<String> {
        Entity::parse(&normalize_newlines(&self.data)).header(name)
    }

    /// Every value of the top-level header `name`, unfolded, still encoded.
    pub fn headers(&self, name: &str) -> Vec<String> {
        Entity::parse(&normalize_newlines(&self.data))
            .headers
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The header `name` with RFC 2047 encoded words (`=?UTF-8?B?…?=`, `=?UTF-8?Q?…?=`)
    /// decoded.
    pub fn decoded_header(&self, name: &str) -> Option<String> {
        self.header(name).map(|v| decode_encoded_words(&v))
    }

    /// The decoded `Subject`.
    pub fn subject(&self) -> Option<String> {
        self.decoded_header("Subject")
    }

    /// The first `text/plain` part (or the whole body of a message without MIME type),
    /// decoded from quoted-printable or base64, with `\n` line ends.
    pub fn text_body(&self) -> Option<String> {
        self.body_of_type("text/plain")
    }

    /// The first `text/html` part, decoded, with `\n` line ends.
    pub fn html_body(&self) -> Option<String> {
        self.body_of_type("text/html")
    }

    /// The content types of the leaf parts in order (`["text/plain", "text/html"]` for a
    /// `multipart/alternative` mail), lower-case, without parameters.
    pub fn part_types(&self) -> Vec<String> {
        let mut leaves = Vec::new();
        Entity::parse(&normalize_newlines(&self.data)).leaves(&mut leaves, 0);
        leaves.into_iter().map(|e| e.mime_type()).collect()
    }

    /// The first URL in the text body that starts with `prefix` (up to the next whitespace,
    /// `<`, `>` or `"`), e.g. the verification link.
    pub fn link_starting_with(&self, prefix: &str) -> Option<String> {
        let body = self.text_body()?;
        let start = body.find(prefix)?;
        let rest = &body[start..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(rest.len());
        Some(rest[..end].to_string())
    }

    fn body_of_type(&self, mime: &str) -> Option<String> {
        let mut leaves = Vec::new();
        Entity::parse(&normalize_newlines(&self.data)).leaves(&mut leaves, 0);
        leaves
            .into_iter()
            .find(|e| e.mime_type() == mime)
            .map(|e| e.decoded_body())
    }
}

struct Shared {
    mails: watch::Sender<Vec<ReceivedMail>>,
    credentials: Option<(String, String)>,
    auth_failures: AtomicUsize,
}

/// A running SMTP sink. Dropping it stops it and closes every open connection.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Starts a sink on `127.0.0.1` with a free port, accepting mail without login.
    pub async fn start() -> anyhow::Result<SmtpSink> {
        Self::spawn(None).await
    }

    /// Starts a sink that requires `AUTH PLAIN` or `AUTH LOGIN` with these credentials
    /// before `MAIL`, and answers `535` to any other.
    pub async fn start_with_auth(
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> anyhow::Result<SmtpSink> {
        Self::spawn(Some((username.into(), password.into()))).await
    }

    async fn spawn(credentials: Option<(String, String)>) -> anyhow::Result<SmtpSink> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (mails, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            mails,
            credentials,
            auth_failures: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(SmtpSink { addr, shared, task })
    }

    /// The port the sink listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.mails.borrow().clone()
    }

    /// Waits until at least `count` messages have arrived or `timeout` has passed, then
    /// returns all messages (fewer than `count` after a time-out).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let mut rx = self.shared.mails.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|m| m.len() >= count)).await;
        self.messages()
    }

    /// How many `AUTH` attempts were refused with `535`.
    pub fn auth_failures(&self) -> usize {
        self.shared.auth_failures.load(Ordering::Relaxed)
    }

    /// Forgets the messages received so far.
    pub fn clear(&self) {
        self.shared.mails.send_modify(Vec::clear);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("addr", &self.addr)
            .field("requires_auth", &self.shared.credentials.is_some())
            .finish_non_exhaustive()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Sessions live in this set, so aborting the accept task ends them too.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    sessions.spawn(session(stream, Arc::clone(&shared)));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Reads one line (up to and including `\n`) into `buf`; `Ok(false)` at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.clear();
    let n = (&mut *reader).take(MAX_LINE).read_until(b'\n', buf).await?;
    Ok(n > 0)
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The state of one SMTP session.
#[derive(Default)]
struct Session {
    helo: Option<String>,
    auth_user: Option<String>,
    from: Option<String>,
    to: Vec<String>,
}

impl Session {
    fn reset_transaction(&mut self) {
        self.from = None;
        self.to.clear();
    }
}

async fn session(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut s = Session::default();

    write
        .write_all(format!("220 {HOSTNAME} ESMTP mock-services SMTP sink ready\r\n").as_bytes())
        .await?;

    loop {
        if !read_line(&mut reader, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(trim_crlf(&line)).into_owned();
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (text.trim().to_ascii_uppercase(), String::new()),
        };
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                "501 5.5.4 Syntax: EHLO/HELO needs a domain or address literal".into()
            }
            "EHLO" => {
                s.helo = Some(arg.clone());
                s.reset_transaction();
                format!(
                    "250-{HOSTNAME} greets {arg}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN\r\n250 HELP"
                )
            }
            "HELO" => {
                s.helo = Some(arg.clone());
                s.reset_transaction();
                format!("250 {HOSTNAME} greets {arg}")
            }
            "AUTH" => auth(&mut s, &arg, &shared, &mut reader, &mut write, &mut line).await?,
            "MAIL" => mail_from(&mut s, &arg, &shared),
            "RCPT" => rcpt_to(&mut s, &arg),
            "DATA" => {
                if !arg.is_empty() {
                    "501 5.5.4 DATA takes no arguments".into()
                } else if s.from.is_none() {
                    "503 5.5.1 Bad sequence of commands: MAIL first".into()
                } else if s.to.is_empty() {
                    "503 5.5.1 Bad sequence of commands: RCPT first".into()
                } else {
                    write
                        .write_all(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
                        .await?;
                    let Some(data) = read_data(&mut reader, &mut line).await? else {
                        return Ok(());
                    };
                    let mail = ReceivedMail {
                        from: s.from.take().unwrap_or_default(),
                        to: std::mem::take(&mut s.to),
                        data,
                        auth_user: s.auth_user.clone(),
                        helo: s.helo.clone().unwrap_or_default(),
                    };
                    let mut id = 0;
                    shared.mails.send_modify(|m| {
                        m.push(mail);
                        id = m.len();
                    });
                    format!("250 2.0.0 OK: queued as {id}")
                }
            }
            "RSET" => {
                s.reset_transaction();
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "QUIT" => {
                write
                    .write_all(format!("221 2.0.0 {HOSTNAME} closing connection\r\n").as_bytes())
                    .await?;
                let _ = write.shutdown().await;
                return Ok(());
            }
            // STARTTLS is deliberately not offered: this sink is plaintext only.
            _ => "502 5.5.2 Command not recognized".into(),
        };
        // One write per reply: two small writes would wait on Nagle + delayed ACK.
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// Extracts the path from `FROM:<addr> PARAMS` / `TO:<addr> PARAMS`.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(&rest[..end])
}

fn mail_from(s: &mut Session, arg: &str, shared: &Shared) -> String {
    if s.helo.is_none() {
        return "503 5.5.1 Bad sequence of commands: send EHLO first".into();
    }
    if shared.credentials.is_some() && s.auth_user.is_none() {
        return "530 5.7.0 Authentication required".into();
    }
    if s.from.is_some() {
        return "503 5.5.1 Bad sequence of commands: nested MAIL command".into();
    }
    match parse_path(arg, "FROM:") {
        Some(path) => {
            s.from = Some(path.to_string());
            "250 2.1.0 OK".into()
        }
        None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
    }
}

fn rcpt_to(s: &mut Session, arg: &str) -> String {
    if s.from.is_none() {
        return "503 5.5.1 Bad sequence of commands: MAIL first".into();
    }
    match parse_path(arg, "TO:") {
        Some(path) if !path.is_empty() => {
            s.to.push(path.to_string());
            "250 2.1.5 OK".into()
        }
        _ => "501 5.5.4 Syntax: RCPT TO:<address>".into(),
    }
}

/// Reads the message after `354` up to the `.` line; `None` if the client hung up first.
async fn read_data<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    let mut data = Vec::new();
    loop {
        if !read_line(reader, line).await? {
            return Ok(None);
        }
        if trim_crlf(line) == b"." {
            return Ok(Some(String::from_utf8_lossy(&data).into_owned()));
        }
        // Dot-unstuffing (RFC 5321 section 4.5.2).
        let content = line.strip_prefix(b".").unwrap_or(line);
        data.extend_from_slice(content);
    }
}

/// Handles `AUTH <mechanism> [initial-response]`, including its `334` challenges, and
/// returns the final reply.
async fn auth<R: AsyncRead + Unpin, W: AsyncWriteExt + Unpin>(
    s: &mut Session,
    arg: &str,
    shared: &Shared,
    reader: &mut BufReader<R>,
    write: &mut W,
    line: &mut Vec<u8>,
) -> std::io::Result<String> {
    if s.helo.is_none() {
        return Ok("503 5.5.1 Bad sequence of commands: send EHLO first".into());
    }
    if s.auth_user.is_some() {
        return Ok("503 5.5.1 Already authenticated".into());
    }
    if s.from.is_some() {
        return Ok("503 5.5.1 AUTH not allowed during a mail transaction".into());
    }
    let mut words = arg.split_whitespace();
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    let initial = words.next().map(str::to_string);

    // Sends a challenge and reads the answer; None when the client cancels with `*` or
    // hangs up.
    async fn challenge<R: AsyncRead + Unpin, W: AsyncWriteExt + Unpin>(
        prompt: &str,
        reader: &mut BufReader<R>,
        write: &mut W,
        line: &mut Vec<u8>,
    ) -> std::io::Result<Option<String>> {
        write
            .write_all(format!("334 {prompt}\r\n").as_bytes())
            .await?;
        if !read_line(reader, line).await? {
            return Ok(None);
        }
        let answer = String::from_utf8_lossy(trim_crlf(line)).trim().to_string();
        Ok((answer != "*").then_some(answer))
    }

    let (user, pass) = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(r) if r != "=" => r,
                Some(_) => String::new(),
                None => match challenge("", reader, write, line).await? {
                    Some(r) => r,
                    None => return Ok("501 5.7.0 Authentication cancelled".into()),
                },
            };
            let Some(decoded) = base64_decode(&response) else {
                return Ok("501 5.5.2 Cannot decode the AUTH PLAIN response".into());
            };
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            let mut fields = decoded.split('\0');
            let (Some(_authzid), Some(user), Some(pass), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Ok("501 5.5.2 AUTH PLAIN wants authzid NUL user NUL password".into());
            };
            (user.to_string(), pass.to_string())
        }
        "LOGIN" => {
            let user_b64 = match initial {
                Some(r) => r,
                None => match challenge("VXNlcm5hbWU6", reader, write, line).await? {
                    Some(r) => r,
                    None => return Ok("501 5.7.0 Authentication cancelled".into()),
                },
            };
            let pass_b64 = match challenge("UGFzc3dvcmQ6", reader, write, line).await? {
                Some(r) => r,
                None => return Ok("501 5.7.0 Authentication cancelled".into()),
            };
            let (Some(user), Some(pass)) = (base64_decode(&user_b64), base64_decode(&pass_b64))
            else {
                return Ok("501 5.5.2 Cannot decode the AUTH LOGIN response".into());
            };
            (
                String::from_utf8_lossy(&user).into_owned(),
                String::from_utf8_lossy(&pass).into_owned(),
            )
        }
        "" => return Ok("501 5.5.4 Syntax: AUTH mechanism [initial-response]".into()),
        _ => return Ok("504 5.5.4 Unrecognized authentication type".into()),
    };
    let accepted = match &shared.credentials {
        Some((u, p)) => *u == user && *p == pass,
        None => true,
    };
    if accepted {
        s.auth_user = Some(user);
        Ok("235 2.7.0 Authentication successful".into())
    } else {
        shared.auth_failures.fetch_add(1, Ordering::Relaxed);
        Ok("535 5.7.8 Authentication credentials invalid".into())
    }
}

// ---------------------------------------------------------------------------------------
// Decoding the received message.
// ---------------------------------------------------------------------------------------

fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n")
}

/// A MIME entity: headers (unfolded) and the raw body.
struct Entity {
    headers: Vec<(String, String)>,
    body: String,
}

impl Entity {
    /// Parses headers and body from text with `\n` line ends.
    fn parse(text: &str) -> Entity {
        let (head, body) = match text.find("\n\n") {
            Some(i) => (&text[..i], &text[i + 2..]),
            None if text.starts_with('\n') => ("", &text[1..]),
            None => (text, ""),
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split('\n') {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    // Unfolding: drop the line break, keep the white space.
                    value.push_str(line);
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim_start().to_string()));
            }
        }
        for (_, value) in &mut headers {
            let trimmed = value.trim_end().len();
            value.truncate(trimmed);
        }
        Entity {
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// `type/subtype` of `Content-Type`, lower-case; `text/plain` when absent.
    fn mime_type(&self) -> String {
        self.header("Content-Type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "text/plain".into())
    }

    /// A parameter of `Content-Type`, e.g. `boundary`, unquoted.
    fn content_type_param(&self, param: &str) -> Option<String> {
        let value = self.header("Content-Type")?;
        content_type_params(&value)
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(param))
            .map(|(_, v)| v)
    }

    /// Collects the non-multipart entities, depth first.
    fn leaves(self, out: &mut Vec<Entity>, depth: usize) {
        if depth < 16
            && self.mime_type().starts_with("multipart/")
            && let Some(boundary) = self.content_type_param("boundary")
        {
            for part in split_multipart(&self.body, &boundary) {
                Entity::parse(&part).leaves(out, depth + 1);
            }
            return;
        }
        out.push(self);
    }

    /// The body decoded per `Content-Transfer-Encoding`, as UTF-8 with `\n` line ends.
    fn decoded_body(&self) -> String {
        let encoding = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "base64" => base64_decode(&self.body).unwrap_or_else(|| self.body.clone().into()),
            "quoted-printable" => quoted_printable_decode(&self.body),
            _ => self.body.clone().into_bytes(),
        };
        normalize_newlines(&String::from_utf8_lossy(&bytes))
    }
}

/// The `name=value` parameters after the first `;` of a header value.
fn content_type_params(value: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = match value.split_once(';') {
        Some((_, r)) => r,
        None => return params,
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.push((name, value));
    }
    params
}

/// The parts of a multipart body (text with `\n` line ends), without the delimiter lines.
fn split_multipart(body: &str, boundary: &str) -> Vec<String> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in body.split('\n') {
        let trimmed = line.trim_end();
        if trimmed == delimiter || trimmed == format!("{delimiter}--") {
            if let Some(lines) = current.take() {
                parts.push(lines.join("\n"));
            }
            if trimmed != delimiter {
                break;
            }
            current = Some(Vec::new());
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        }
    }
    parts
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes quoted-printable (RFC 2045 section 6.7): `=XX` bytes, `=` at a line end is a
/// soft line break. Malformed escapes are kept as they are.
fn quoted_printable_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        // Soft line break: `=` then optional transport padding, then the line end.
        let mut j = i + 1;
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'\r' {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'\n' {
            i = j + 1;
            continue;
        }
        if j >= bytes.len() {
            break;
        }
        match (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            _ => {
                out.push(b'=');
                i += 1;
            }
        }
    }
    out
}

/// Standard base64 that accepts missing padding (some clients omit it).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes standard base64, ignoring white space (line breaks in bodies).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64.decode(compact).ok()
}

/// Encodes standard base64 with padding.
fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    BASE64.encode(data)
}

/// Base64 of `\0user\0password`, the `AUTH PLAIN` response, for tests that talk to the
/// sink by hand.
pub fn auth_plain_response(user: &str, password: &str) -> String {
    base64_encode(format!("\0{user}\0{password}").as_bytes())
}

/// Decodes RFC 2047 encoded words (`=?charset?B?…?=`, `=?charset?Q?…?=`) in a header
/// value. White space between adjacent encoded words is dropped, and their bytes are joined
/// before UTF-8 decoding (a character may be split across words). Charsets other than
/// UTF-8/ASCII are decoded as UTF-8 too (lettre only writes UTF-8).
pub fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut rest = value;
    let mut after_word = false;
    while let Some((start, end, bytes)) = find_encoded_word(rest) {
        let between = &rest[..start];
        if !(after_word && between.chars().all(char::is_whitespace)) {
            out.push_str(&String::from_utf8_lossy(&pending));
            pending.clear();
            out.push_str(between);
        }
        pending.extend_from_slice(&bytes);
        after_word = true;
        rest = &rest[end..];
    }
    out.push_str(&String::from_utf8_lossy(&pending));
    out.push_str(rest);
    out
}

/// The first valid encoded word in `s`: its start, end and decoded bytes.
fn find_encoded_word(s: &str) -> Option<(usize, usize, Vec<u8>)> {
    let mut from = 0;
    while let Some(rel) = s[from..].find("=?") {
        let start = from + rel;
        if let Some((len, bytes)) = parse_encoded_word(&s[start..]) {
            return Some((start, start + len, bytes));
        }
        from = start + 2;
    }
    None
}

/// Parses `=?charset?enc?text?=` at the start of `s`: its length and decoded bytes.
fn parse_encoded_word(s: &str) -> Option<(usize, Vec<u8>)> {
    let inner = s.strip_prefix("=?")?;
    let q1 = inner.find('?')?;
    let charset = &inner[..q1];
    if charset.is_empty() || charset.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    let after_charset = &inner[q1 + 1..];
    let (encoding, after_enc) = after_charset.split_once('?')?;
    let end = after_enc.find("?=")?;
    let text = &after_enc[..end];
    if text.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64_decode(text)?,
        "Q" | "q" => {
            let mut out = Vec::with_capacity(text.len());
            let t = text.as_bytes();
            let mut i = 0;
            while i < t.len() {
                match t[i] {
                    b'_' => {
                        out.push(b' ');
                        i += 1;
                    }
                    b'=' => {
                        let h = t.get(i + 1).copied().and_then(hex_value)?;
                        let l = t.get(i + 2).copied().and_then(hex_value)?;
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    b => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            out
        }
        _ => return None,
    };
    // `=?` + charset + `?` + encoding + `?` + text + `?=`
    let len = 2 + q1 + 1 + encoding.len() + 1 + end + 2;
    Some((len, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "日本語"] {
            let enc = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&enc).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm9v\r\nYmFy").unwrap(), b"foobar");
        assert!(base64_decode("Zm9v!").is_none());
        assert_eq!(auth_plain_response("u", "p"), "AHUAcA==");
    }

    #[test]
    fn quoted_printable() {
        assert_eq!(
            quoted_printable_decode("caf=C3=A9 =3D ok=\nnext=\r\nline\n=E6=97=A5"),
            "café = oknextline\n日".as_bytes()
        );
        assert_eq!(quoted_printable_decode("a=zz b="), b"a=zz b");
        assert_eq!(quoted_printable_decode("soft= \nbreak"), b"softbreak");
    }

    #[test]
    fn encoded_words() {
        assert_eq!(
            decode_encoded_words("=?UTF-8?B?5pel5pys6Kqe?= =?utf-8?q?_caf=C3=A9?="),
            "日本語 café"
        );
        // A character split across two words, joined by folding white space.
        assert_eq!(
            decode_encoded_words("=?UTF-8?B?5pel5g==?=\r\n =?UTF-8?B?nKw=?= x"),
            "日本 x"
        );
        assert_eq!(
            decode_encoded_words("Hello =?UTF-8?Q?W=C3=B6rld?= again"),
            "Hello Wörld again"
        );
        assert_eq!(decode_encoded_words("plain =? text"), "plain =? text");
        assert_eq!(decode_encoded_words("=?UTF-8?X?abc?="), "=?UTF-8?X?abc?=");
    }

    fn mail(data: &str) -> ReceivedMail {
        ReceivedMail {
            from: "a@x.test".into(),
            to: vec!["b@y.test".into()],
            data: data.into(),
            auth_user: None,
            helo: "client".into(),
        }
    }

    #[test]
    fn decodes_multipart_messages() {
        let raw = "From: A <a@x.test>\r\n\
                   Subject: =?UTF-8?B?44OG44K544OI?=\r\n\
                   \x20=?UTF-8?Q?_mail?=\r\n\
                   MIME-Version: 1.0\r\n\
                   Content-Type: multipart/alternative;\r\n\
                   \x20boundary=\"b1\"\r\n\
                   \r\n\
                   preamble\r\n\
                   --b1\r\n\
                   Content-Type: text/plain; charset=utf-8\r\n\
                   Content-Transfer-Encoding: quoted-printable\r\n\
                   \r\n\
                   Open https://x.test/verify?token=3Dabc now=\r\n\
                   !\r\n\
                   --b1\r\n\
                   Content-Type: text/html; charset=utf-8\r\n\
                   Content-Transfer-Encoding: base64\r\n\
                   \r\n\
                   PHA+aGk8L3A+\r\n\
                   --b1--\r\n\
                   epilogue\r\n";
        let m = mail(raw);
        assert_eq!(m.subject().unwrap(), "テスト mail");
        assert_eq!(m.header("from").unwrap(), "A <a@x.test>");
        assert_eq!(
            m.header("content-type").unwrap(),
            "multipart/alternative; boundary=\"b1\""
        );
        assert_eq!(m.part_types(), vec!["text/plain", "text/html"]);
        assert_eq!(
            m.text_body().unwrap(),
            "Open https://x.test/verify?token=abc now!"
        );
        assert_eq!(m.html_body().unwrap(), "<p>hi</p>");
        assert_eq!(
            m.link_starting_with("https://x.test/").unwrap(),
            "https://x.test/verify?token=abc"
        );
        assert_eq!(m.headers("X-Missing"), Vec::<String>::new());

        let plain = mail("Subject: hi\r\n\r\nline one\r\nline two\r\n");
        assert_eq!(plain.text_body().unwrap(), "line one\nline two\n");
        assert_eq!(plain.html_body(), None);
    }

    /// A hand-driven SMTP client for the conversation tests.
    struct Client {
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
    }

    impl Client {
        async fn connect(sink: &SmtpSink) -> (Client, String) {
            let stream = TcpStream::connect(sink.addr()).await.unwrap();
            let (r, w) = stream.into_split();
            let mut c = Client {
                reader: BufReader::new(r),
                writer: w,
            };
            let greeting = c.reply().await;
            (c, greeting)
        }

        /// Reads one (possibly multi-line) reply.
        async fn reply(&mut self) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).await.unwrap();
                assert!(line.ends_with("\r\n"), "{line:?}");
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> String {
            self.writer
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
            self.reply().await
        }
    }

    #[tokio::test]
    async fn full_conversation() {
        let sink = SmtpSink::start().await.unwrap();
        let (mut c, greeting) = Client::connect(&sink).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("503"));
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250-"), "{ehlo}");
        for ext in ["AUTH PLAIN LOGIN", "8BITMIME", "SMTPUTF8"] {
            assert!(ehlo.contains(ext), "{ehlo}");
        }
        assert!(!ehlo.contains("STARTTLS"));
        assert!(c.cmd("STARTTLS").await.starts_with("502"));
        assert!(c.cmd("FOO bar").await.starts_with("502"));
        assert!(c.cmd("NOOP").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<b@y.test>").await.starts_with("503"));
        assert!(c.cmd("DATA").await.starts_with("503"));
        assert!(c.cmd("MAIL FROM:a@x.test").await.starts_with("501"));
        assert!(
            c.cmd("mail from:<a@x.test> BODY=8BITMIME")
                .await
                .starts_with("250")
        );
        assert!(c.cmd("MAIL FROM:<again@x.test>").await.starts_with("503"));
        assert!(c.cmd("RSET").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<>").await.starts_with("501"));
        assert!(c.cmd("RCPT TO:<b@y.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<c@y.test>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        let reply = c
            .cmd("Subject: dots\r\n\r\n..leading dot\r\n..\r\nafter\r\n.")
            .await;
        assert!(reply.starts_with("250"), "{reply}");
        assert!(c.cmd("QUIT").await.starts_with("221"));
        let mut rest = Vec::new();
        c.reader.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let mails = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mails.len(), 1);
        let m = &mails[0];
        assert_eq!(m.from, "");
        assert_eq!(m.to, vec!["b@y.test", "c@y.test"]);
        assert_eq!(m.helo, "client.test");
        assert_eq!(m.auth_user, None);
        // Lines starting with a dot were unstuffed; `..` is a line with one dot, not the end.
        assert_eq!(
            m.data,
            "Subject: dots\r\n\r\n.leading dot\r\n.\r\nafter\r\n"
        );
        // Wait for more than there is: returns what there is after the time-out.
        assert_eq!(sink.wait_for(2, Duration::from_millis(50)).await.len(), 1);
        sink.clear();
        assert!(sink.messages().is_empty());
    }

    #[tokio::test]
    async fn authentication() {
        let sink = SmtpSink::start_with_auth("alice", "s3cret").await.unwrap();
        let (mut c, _) = Client::connect(&sink).await;
        assert!(c.cmd("AUTH PLAIN").await.starts_with("503"));
        c.cmd("EHLO client.test").await;
        assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("530"));
        let bad = auth_plain_response("alice", "wrong");
        assert!(c.cmd(&format!("AUTH PLAIN {bad}")).await.starts_with("535"));
        assert!(c.cmd("AUTH CRAM-MD5").await.starts_with("504"));
        assert!(c.cmd("AUTH PLAIN !!!").await.starts_with("501"));
        // PLAIN without an initial response, then cancelled.
        assert!(c.cmd("AUTH PLAIN").await.starts_with("334"));
        assert!(c.cmd("*").await.starts_with("501"));
        // LOGIN with challenges.
        assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
        assert_eq!(
            c.cmd(&base64_encode(b"alice")).await,
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert!(
            c.cmd(&base64_encode(b"nope"))
                .await
                .starts_with("535 5.7.8")
        );
        assert_eq!(sink.auth_failures(), 2);
        // PLAIN via challenge, right password.
        assert!(c.cmd("AUTH PLAIN").await.starts_with("334"));
        let good = auth_plain_response("alice", "s3cret");
        assert!(c.cmd(&good).await.starts_with("235"));
        assert!(c.cmd("AUTH PLAIN").await.starts_with("503"));
        assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<b@y.test>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        assert!(
            c.cmd("Subject: x\r\n\r\nbody\r\n.")
                .await
                .starts_with("250")
        );
        let mails = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mails[0].auth_user.as_deref(), Some("alice"));

        // A second session: LOGIN with the user name as initial response.
        let (mut c, _) = Client::connect(&sink).await;
        c.cmd("HELO client.test").await;
        assert_eq!(
            c.cmd(&format!("AUTH LOGIN {}", base64_encode(b"alice")))
                .await,
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert!(c.cmd(&base64_encode(b"s3cret")).await.starts_with("235"));
    }

    #[tokio::test]
    async fn dropping_the_sink_closes_connections() {
        let sink = SmtpSink::start().await.unwrap();
        let addr = sink.addr();
        let (mut c, _) = Client::connect(&sink).await;
        drop(sink);
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.reader.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}

/// `accounts::mail::Mailer` (lettre) talking to the sink: the real client against the
/// stand-in. `accounts` is a dev-dependency of this crate (not the other way round), so
/// these tests live here.
#[cfg(test)]
mod mailer_tests {
    use std::time::Duration;

    use accounts::i18n::Locale;
    use accounts::mail::{MailError, Mailer, SmtpConfig, Template, TlsMode};

    use super::SmtpSink;

    const WAIT: Duration = Duration::from_secs(10);

    fn config(sink_port: u16, creds: Option<(&str, &str)>) -> SmtpConfig {
        let mut cfg = SmtpConfig::new("127.0.0.1", "Acme AI <noreply@acme.test>");
        cfg.port = sink_port;
        cfg.tls = TlsMode::None;
        cfg.timeout_secs = 5;
        cfg.helo_name = Some("gateway.acme.test".into());
        if let Some((u, p)) = creds {
            cfg.username = Some(u.into());
            cfg.password = Some(p.into());
        }
        cfg
    }

    #[tokio::test]
    async fn japanese_verification_mail_arrives_readable() {
        let sink = SmtpSink::start_with_auth("mailer", "pw-123").await.unwrap();
        let mailer = Mailer::new(&config(sink.port(), Some(("mailer", "pw-123")))).unwrap();
        mailer.check().await.unwrap();

        let link = "https://acme.test/verify?token=Zx9_abc-123&lang=ja";
        let (subject, text) = Template::verify_email(Locale::Ja, "Acme AI", link, 24);
        assert_eq!(subject, "【Acme AI】メールアドレスのご確認");
        mailer
            .send("山田 太郎 <taro@example.jp>", &subject, &text, None)
            .await
            .unwrap();

        let mails = sink.wait_for(1, WAIT).await;
        assert_eq!(mails.len(), 1);
        let m = &mails[0];
        assert_eq!(m.from, "noreply@acme.test");
        assert_eq!(m.to, vec!["taro@example.jp"]);
        assert_eq!(m.auth_user.as_deref(), Some("mailer"));
        assert_eq!(m.helo, "gateway.acme.test");
        // The raw header is encoded (ASCII only), the decoded one is the Japanese text.
        let raw_subject = m.header("Subject").unwrap();
        assert!(raw_subject.is_ascii(), "{raw_subject}");
        assert_eq!(m.subject().unwrap(), subject);
        assert_eq!(
            m.decoded_header("To").unwrap(),
            "山田 太郎 <taro@example.jp>"
        );
        assert!(m.header("Message-ID").unwrap().ends_with("@acme.test>"));
        assert!(m.header("Date").is_some());

        let body = m.text_body().unwrap();
        assert!(body.contains("メールアドレスを確認してください"), "{body}");
        assert!(body.contains("このリンクの有効期間は24時間です"), "{body}");
        assert_eq!(body.trim_end(), text.trim_end());
        assert_eq!(
            m.link_starting_with("https://acme.test/").as_deref(),
            Some(link)
        );
    }

    #[tokio::test]
    async fn chinese_verification_mail_with_html_part() {
        let sink = SmtpSink::start().await.unwrap();
        let mailer = Mailer::new(&config(sink.port(), None)).unwrap();
        let link = "https://acme.test/verify?token=abc&x=%E4%B8%AD";
        let (subject, text) = Template::verify_email(Locale::ZhCn, "Acme AI", link, 24);
        // A line starting with a dot must survive dot-stuffing.
        let text = format!("{text}\n.\n.signature line");
        let html = format!("<p>请打开 <a href=\"{link}\">{link}</a></p>");
        mailer
            .send("user@example.cn", &subject, &text, Some(&html))
            .await
            .unwrap();

        let mails = sink.wait_for(1, WAIT).await;
        let m = &mails[0];
        assert_eq!(m.subject().unwrap(), "请验证您的 Acme AI 邮箱地址");
        assert!(
            m.header("Content-Type")
                .unwrap()
                .starts_with("multipart/alternative")
        );
        assert_eq!(m.part_types(), vec!["text/plain", "text/html"]);
        let body = m.text_body().unwrap();
        assert!(body.contains("请打开以下链接验证您的邮箱地址"), "{body}");
        assert!(body.contains("该链接在 24 小时内有效"), "{body}");
        assert!(body.contains(link), "{body}");
        assert!(body.ends_with("\n.\n.signature line"), "{body:?}");
        assert!(m.html_body().unwrap().contains(&format!("href=\"{link}\"")));
        assert_eq!(
            m.link_starting_with("https://acme.test/").as_deref(),
            Some(link)
        );
    }

    #[tokio::test]
    async fn other_templates_round_trip() {
        let sink = SmtpSink::start().await.unwrap();
        let mailer = Mailer::new(&config(sink.port(), None)).unwrap();
        let cases = [
            Template::reset_password(Locale::PtBr, "Acme AI", "https://acme.test/reset?t=1", 1),
            Template::test_message(Locale::Hi, "Acme AI"),
            Template::password_changed(Locale::En, "Acme AI"),
            Template::new_sign_in(
                Locale::ZhCn,
                "Acme AI",
                "Firefox · Linux",
                "203.0.113.9",
                "2025-01-02 03:04 UTC",
            ),
        ];
        for (subject, text) in &cases {
            mailer
                .send("u@example.com", subject, text, None)
                .await
                .unwrap();
        }
        let mails = sink.wait_for(cases.len(), WAIT).await;
        assert_eq!(mails.len(), cases.len());
        for ((subject, text), m) in cases.iter().zip(&mails) {
            assert_eq!(&m.subject().unwrap(), subject);
            assert_eq!(m.text_body().unwrap().trim_end(), text.trim_end());
        }
        assert!(cases[0].1.contains("O link é válido por 1 hora."));
    }

    #[tokio::test]
    async fn wrong_password_is_reported_as_auth_failure() {
        let sink = SmtpSink::start_with_auth("mailer", "right").await.unwrap();
        let mailer = Mailer::new(&config(sink.port(), Some(("mailer", "wrong")))).unwrap();
        let err = mailer
            .send("u@example.com", "s", "t", None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
        assert!(msg.contains("535"), "{msg}");
        assert!(
            msg.contains("check smtp.username and smtp.password"),
            "{msg}"
        );
        assert!(msg.contains(&format!("127.0.0.1:{}", sink.port())), "{msg}");
        assert!(!err.is_transient());
        assert_eq!(sink.auth_failures(), 1);
        assert!(sink.messages().is_empty());
        assert!(matches!(mailer.check().await, Err(MailError::Auth { .. })));

        // No credentials at all against a server that wants them.
        let anonymous = Mailer::new(&config(sink.port(), None)).unwrap();
        let err = anonymous
            .send("u@example.com", "s", "t", None)
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("set smtp.username and smtp.password"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connection_refused_names_host_and_port() {
        // A port that nothing listens on: bind, note the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mailer = Mailer::new(&config(port, None)).unwrap();
        let err = mailer
            .send("u@example.com", "s", "t", None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, MailError::Connect { .. }), "{err:?}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.contains("connection refused"), "{msg}");
        assert!(msg.contains("smtp.host and smtp.port"), "{msg}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn tls_mode_mismatch_is_explained() {
        let sink = SmtpSink::start().await.unwrap();

        let mut cfg = config(sink.port(), None);
        cfg.tls = TlsMode::StartTls;
        let err = Mailer::new(&cfg)
            .unwrap()
            .send("u@example.com", "s", "t", None)
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Tls { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("does not offer STARTTLS"), "{msg}");
        assert!(msg.contains("smtp.tls"), "{msg}");

        cfg.tls = TlsMode::Tls;
        let err = Mailer::new(&cfg)
            .unwrap()
            .send("u@example.com", "s", "t", None)
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Tls { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("smtp.tls is \"tls\""), "{msg}");
        assert!(sink.messages().is_empty());
    }

    #[tokio::test]
    async fn bad_recipient_is_rejected_before_connecting() {
        let sink = SmtpSink::start().await.unwrap();
        let mailer = Mailer::new(&config(sink.port(), None)).unwrap();
        let err = mailer
            .send("not an address", "s", "t", None)
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Address { .. }), "{err:?}");
        assert!(err.to_string().contains("`not an address`"));
    }
}
