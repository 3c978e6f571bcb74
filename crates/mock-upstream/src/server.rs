//! The HTTP server: connection handling (including abrupt drops), dispatch, auth and the
//! endpoint handlers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::errors::{self, ApiError, Dialect};
use crate::plan::{self, Controls, Kind};
use crate::render::{self, Events, Step, StreamGen};
use crate::wire::{base64_encode, push_json_str, push_u64, unix_now};
use crate::{Behavior, Defaults, RecordedRequest};
use crate::{anthropic, gemini};

const MAX_BODY: usize = 256 * 1024 * 1024;
const MAX_DIMENSIONS: u64 = 65_536;

// ---------------------------------------------------------------------------------------
// Kill switches: a connection (or the whole server) can be closed abruptly at any time.

pub(crate) struct Switch {
    killed: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Switch {
    fn new() -> Arc<Self> {
        Arc::new(Switch {
            killed: AtomicBool::new(false),
            tx: watch::channel(false).0,
        })
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

type KillWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A TCP stream that fails every operation once its connection or the server is killed,
/// which makes hyper drop the connection without writing anything more.
pub(crate) struct MockIo {
    inner: TcpStream,
    conn: Arc<Switch>,
    server: Arc<Switch>,
    wait: Option<KillWait>,
}

impl MockIo {
    fn dead(&self) -> bool {
        self.conn.is_killed() || self.server.is_killed()
    }

    /// Registers for a wake-up on kill; true if already killed.
    fn poll_kill(&mut self, cx: &mut Context<'_>) -> bool {
        let wait = self.wait.get_or_insert_with(|| {
            let (conn, server) = (self.conn.clone(), self.server.clone());
            Box::pin(async move {
                let mut a = conn.tx.subscribe();
                let mut b = server.tx.subscribe();
                tokio::select! {
                    _ = a.wait_for(|k| *k) => {}
                    _ = b.wait_for(|k| *k) => {}
                }
            })
        });
        wait.as_mut().poll(cx).is_ready() || self.dead()
    }
}

fn dropped() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "mock-upstream: connection dropped",
    )
}

impl AsyncRead for MockIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead() {
            return Poll::Ready(Err(dropped()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.poll_kill(cx) => Poll::Ready(Err(dropped())),
            other => other,
        }
    }
}

impl AsyncWrite for MockIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead() {
            return Poll::Ready(Err(dropped()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pub(crate) struct MockListener {
    inner: TcpListener,
    server: Arc<Switch>,
}

impl Listener for MockListener {
    type Io = MockIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (MockIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = MockIo {
                        inner: stream,
                        conn: Switch::new(),
                        server: self.server.clone(),
                        wait: None,
                    };
                    return (io, addr);
                }
                // Typically EMFILE; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Per-connection handle given to handlers, to drop their own connection.
#[derive(Clone)]
pub(crate) struct ConnInfo(Arc<Switch>);

impl ConnInfo {
    /// Close this connection abruptly (nothing more is written).
    pub fn kill(&self) {
        self.0.kill();
    }
}

impl Connected<IncomingStream<'_, MockListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, MockListener>) -> Self {
        ConnInfo(stream.io().conn.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Shared state.

struct Recorded {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

pub(crate) struct Shared {
    pub defaults: Defaults,
    pub kill: Arc<Switch>,
    requests: AtomicU64,
    ids: AtomicU64,
    behavior: Mutex<Behavior>,
    last: Mutex<Option<Recorded>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.behavior) = b;
    }

    pub fn behavior(&self) -> Behavior {
        lock(&self.behavior).clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        let guard = lock(&self.last);
        let r = guard.as_ref()?;
        Some(RecordedRequest {
            method: r.method.to_string(),
            path: r.uri.path().to_owned(),
            query: r.uri.query().map(str::to_owned),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: r.body.clone(),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

pub(crate) async fn spawn(
    addr: SocketAddr,
    defaults: Defaults,
) -> anyhow::Result<(SocketAddr, Arc<Shared>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("mock-upstream: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared {
        defaults,
        kill: Switch::new(),
        requests: AtomicU64::new(0),
        ids: AtomicU64::new(0),
        behavior: Mutex::new(Behavior::Normal),
        last: Mutex::new(None),
    });
    let app = Router::new()
        .fallback(handle)
        .with_state(shared.clone())
        .into_make_service_with_connect_info::<ConnInfo>();
    let listener = MockListener {
        inner: listener,
        server: shared.kill.clone(),
    };
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, shared, task))
}

// ---------------------------------------------------------------------------------------
// Responses.

pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn sse_response(events: StreamGen, chunk_delay_ms: u64) -> Response {
    stream_response(events, chunk_delay_ms, "text/event-stream")
}

/// A streamed body from `events`, with `chunk_delay_ms` between events; `Step::Drop`
/// aborts the connection after flushing what was produced.
pub(crate) fn stream_response<E: Events>(
    events: E,
    chunk_delay_ms: u64,
    content_type: &'static str,
) -> Response {
    let delay = Duration::from_millis(chunk_delay_ms);
    let stream =
        futures_util::stream::unfold((events, true), move |(mut events, first)| async move {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match events.next_step() {
                Step::Event(bytes) => Some((Ok::<Bytes, io::Error>(bytes), (events, false))),
                Step::Drop => {
                    // Let hyper flush what was already produced, then abort the connection.
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Some((Err(dropped()), (events, false)))
                }
                Step::End => None,
            }
        });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

const MODEL_IDS: [&str; 4] = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
];

fn push_model(b: &mut String, id: &str) {
    b.push_str(r#"{"id":"#);
    push_json_str(b, id);
    b.push_str(r#","object":"model","created":1700000000,"owned_by":"mock"}"#);
}

fn models_list() -> Response {
    let mut b = String::with_capacity(400);
    b.push_str(r#"{"object":"list","data":["#);
    for (i, id) in MODEL_IDS.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        push_model(&mut b, id);
    }
    b.push_str("]}");
    json_response(StatusCode::OK, b)
}

fn model_object(id: &str) -> Response {
    let mut b = String::with_capacity(100 + id.len());
    push_model(&mut b, id);
    json_response(StatusCode::OK, b)
}

// ---------------------------------------------------------------------------------------
// Dispatch.

async fn handle(
    State(st): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    // Azure OpenAI: /openai/deployments/{deployment}/chat/completions?api-version=…
    // with the key in `api-key`; served like the OpenAI path it stands for.
    let azure_path;
    let azure = parts.uri.path().starts_with("/openai/deployments/");
    let path = if azure {
        let rest = &parts.uri.path()["/openai/deployments/".len()..];
        let suffix = rest.split_once('/').map(|(_, s)| s).unwrap_or("");
        if !parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("api-version=")))
        {
            return ApiError::new(404, "invalid_request_error", "Resource not found")
                .into_response();
        }
        azure_path = format!("/v1/{suffix}");
        azure_path.as_str()
    } else {
        parts.uri.path()
    };
    if path == "/health" || path == "/healthz" {
        return json_response(StatusCode::OK, r#"{"status":"ok"}"#);
    }
    if !path.starts_with("/v1/") && !path.starts_with("/v1beta/") {
        return errors::not_found_url(parts.method.as_str(), path).into_response();
    }
    let dialect = Dialect::of_path(path);
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(413, "invalid_request_error", "Request body too large.")
                .into_response();
        }
    };
    st.requests.fetch_add(1, Ordering::SeqCst);
    *lock(&st.last) = Some(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });

    match st.behavior() {
        Behavior::Normal => {}
        Behavior::Status(s) => return behavior_error(dialect, s).into_response(),
        Behavior::RateLimited => return behavior_error(dialect, 429).into_response(),
        Behavior::InsufficientQuota => {
            let e = match dialect {
                Dialect::OpenAi => errors::insufficient_quota(),
                Dialect::Anthropic => anthropic::insufficient_quota(),
                Dialect::Gemini => gemini::insufficient_quota(),
            };
            return e.into_response();
        }
        Behavior::DropConnection => {
            conn.0.kill();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Behavior::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }

    let method = &parts.method;
    match dialect {
        Dialect::OpenAi => {}
        Dialect::Anthropic => {
            return if path == "/v1/messages" && method == Method::POST {
                anthropic::messages(&st, &conn, &parts.headers, &body).await
            } else {
                anthropic::not_found().into_response()
            };
        }
        Dialect::Gemini => {
            return gemini::handle(
                &st,
                &conn,
                method,
                path,
                parts.uri.query(),
                &parts.headers,
                &body,
            )
            .await;
        }
    }

    if let Err(e) = check_auth(&parts.headers, azure) {
        return e.into_response();
    }

    match path {
        "/v1/chat/completions" if method == Method::POST => {
            generate(&st, &conn, Kind::Chat, &body).await
        }
        "/v1/completions" if method == Method::POST => {
            generate(&st, &conn, Kind::Completion, &body).await
        }
        "/v1/embeddings" if method == Method::POST => embeddings(&st, &conn, &body).await,
        "/v1/images/generations" if method == Method::POST => crate::extras::images(&body),
        "/v1/audio/speech" if method == Method::POST => crate::extras::speech(&body),
        "/v1/audio/transcriptions" if method == Method::POST => crate::extras::transcriptions(),
        "/v1/moderations" if method == Method::POST => crate::extras::moderations(&body),
        "/v1/rerank" if method == Method::POST => crate::extras::rerank(&body),
        "/v1/responses" if method == Method::POST => crate::extras::responses(&body),
        "/v1/models" if method == Method::GET => models_list(),
        p if method == Method::GET && p.starts_with("/v1/models/") => {
            match &p["/v1/models/".len()..] {
                "" => models_list(),
                id => model_object(id),
            }
        }
        _ => errors::not_found_url(method.as_str(), path).into_response(),
    }
}

/// The error a [`Behavior`] answers with, in the endpoint's dialect (429 = rate limited,
/// with `retry-after` for OpenAI and Anthropic).
fn behavior_error(dialect: Dialect, status: u16) -> ApiError {
    match (dialect, status) {
        (Dialect::OpenAi, 429) => errors::rate_limited(),
        (Dialect::OpenAi, s) => errors::for_status(s),
        (Dialect::Anthropic, s) => anthropic::for_status(s),
        (Dialect::Gemini, s) => gemini::for_status(s),
    }
}

fn check_auth(headers: &HeaderMap, azure: bool) -> Result<(), ApiError> {
    let name = if azure { "api-key" } else { "authorization" };
    let Some(value) = headers.get(name) else {
        return Err(errors::missing_key());
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let key = if azure {
        value.trim()
    } else {
        match value.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
            _ => return Err(errors::missing_key()),
        }
    };
    if key.is_empty() {
        Err(errors::missing_key())
    } else if key.contains("bad") {
        Err(errors::invalid_key(key))
    } else if key.contains("noquota") {
        Err(errors::insufficient_quota())
    } else if key.contains("ratelimit") {
        Err(errors::rate_limited())
    } else {
        Ok(())
    }
}

/// The body as a JSON object, if it is one.
pub(crate) fn parse_json(body: &[u8]) -> Option<Value> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// Sleeps `mock.delay_ms`.
pub(crate) async fn apply_delay(ctl: &Controls) {
    if ctl.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(ctl.delay_ms)).await;
    }
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(errors::bad_json()),
    }
}

/// Applies `mock.delay_ms`, `mock.status` and `mock.error_code`, in that order.
async fn pre_answer(
    ctl: &Controls,
    body: &Value,
    param: &str,
    prompt_tokens: impl FnOnce() -> u64,
) -> Result<(), ApiError> {
    apply_delay(ctl).await;
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    match errors::for_controls(
        ctl.status,
        ctl.error_code.as_deref(),
        model,
        param,
        prompt_tokens,
    ) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn generate(st: &Shared, conn: &ConnInfo, kind: Kind, body: &[u8]) -> Response {
    let v = match parse_object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let ctl = Controls::parse(&v, &st.defaults);
    let param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    if let Err(e) = pre_answer(&ctl, &v, param, || plan::prompt_tokens_lenient(kind, &v)).await {
        return e.into_response();
    }
    let plan = match plan::build(kind, &v, ctl) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let id = st.next_id();
    let created = unix_now();
    if plan.stream {
        let delay = plan.controls.chunk_delay_ms;
        sse_response(StreamGen::new(plan, id, created), delay)
    } else if plan.controls.drop_after.is_some() {
        // Nothing streamed yet: dropping "after n chunks" means dropping without a response.
        conn.0.kill();
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    } else {
        json_response(StatusCode::OK, render::completion_body(&plan, id, created))
    }
}

// ---------------------------------------------------------------------------------------
// Embeddings.

fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of one input item (a string or a list of token ids).
fn item_hash(item: &Value) -> u64 {
    const SEED: u64 = 0xcbf2_9ce4_8422_2325;
    match item {
        Value::String(s) => fnv1a(s.as_bytes(), SEED),
        Value::Array(ids) => ids.iter().fold(SEED, |h, id| {
            fnv1a(&id.as_i64().unwrap_or(0).to_le_bytes(), h)
        }),
        other => fnv1a(other.to_string().as_bytes(), SEED),
    }
}

/// A deterministic unit vector for the item.
pub(crate) fn embedding_vector(item: &Value, dims: usize) -> Vec<f32> {
    let h = item_hash(item);
    let mut v: Vec<f32> = (0..dims as u64)
        .map(|j| {
            let x = splitmix64(h ^ j.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

async fn embeddings(st: &Shared, conn: &ConnInfo, body: &[u8]) -> Response {
    let v = match parse_object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let ctl = Controls::parse(&v, &st.defaults);
    if let Err(e) = pre_answer(&ctl, &v, "input", || plan::input_tokens(v.get("input"))).await {
        return e.into_response();
    }
    if ctl.drop_after.is_some() {
        conn.0.kill();
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match embeddings_body(&v, ctl.omit_usage) {
        Ok(b) => json_response(StatusCode::OK, b),
        Err(e) => e.into_response(),
    }
}

fn embeddings_body(v: &Value, omit_usage: bool) -> Result<String, ApiError> {
    let model = plan::model_of(v)?;
    let input = v.get("input");
    let items: Vec<&Value> = match input {
        Some(Value::String(_)) => input.into_iter().collect(),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.").param("input"));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => input.into_iter().collect(),
        Some(Value::Array(a)) => a.iter().collect(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("Missing required parameter: 'input'.")
                .param("input")
                .code("missing_required_parameter"));
        }
        Some(_) => {
            return Err(ApiError::invalid("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.").param("input"));
        }
    };
    let dims = match v.get("dimensions") {
        None | Some(Value::Null) => 8,
        Some(d) => match d.as_u64() {
            Some(n) if (1..=MAX_DIMENSIONS).contains(&n) => n as usize,
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid value for 'dimensions' = {d}. Must be an integer between 1 and {MAX_DIMENSIONS}."
                ))
                .param("dimensions"));
            }
        },
    };
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid value for 'encoding_format' = {other}. Supported values are: 'float' and 'base64'."
            ))
            .param("encoding_format"));
        }
    };

    let per_item = if base64 { dims * 6 } else { dims * 12 };
    let mut b = String::with_capacity(200 + items.len() * (60 + per_item));
    b.push_str(r#"{"object":"list","data":["#);
    let mut raw = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        b.push_str(r#"{"object":"embedding","index":"#);
        push_u64(&mut b, i as u64);
        b.push_str(r#","embedding":"#);
        let vector = embedding_vector(item, dims);
        if base64 {
            raw.clear();
            raw.extend(vector.iter().flat_map(|x| x.to_le_bytes()));
            b.push('"');
            b.push_str(&base64_encode(&raw));
            b.push('"');
        } else {
            b.push('[');
            for (j, x) in vector.iter().enumerate() {
                if j > 0 {
                    b.push(',');
                }
                use std::fmt::Write as _;
                let _ = write!(b, "{x}");
            }
            b.push(']');
        }
        b.push('}');
    }
    b.push_str(r#"],"model":"#);
    push_json_str(&mut b, model);
    if !omit_usage {
        let p = plan::input_tokens(input);
        b.push_str(r#","usage":{"prompt_tokens":"#);
        push_u64(&mut b, p);
        b.push_str(r#","total_tokens":"#);
        push_u64(&mut b, p);
        b.push('}');
    }
    b.push('}');
    Ok(b)
}
