//! The gateway as the official Python SDKs see it (`openai`, `anthropic`,
//! `google-genai`): the real binary, set up through the management API,
//! driven by the scripts in `tests/python/` in a venv made from
//! `tests/python/requirements.txt`.
//!
//! `official_openai_python_sdk_works_against_the_gateway` runs the openai
//! script against an OpenAI channel, with the embeddings and legacy
//! completions checks. `every_official_sdk_works_against_every_channel_kind`
//! runs each SDK's script against a model served by a channel of each kind
//! (`openai`, `anthropic`, `gemini`), so every client dialect meets every
//! upstream dialect through the gateway's translation (3 x 3 runs).
//!
//! The venv lives in `CARGO_TARGET_TMPDIR/pyvenv-<hash of requirements.txt>`
//! and is reused across runs; it needs `python3` (with `venv`) and PyPI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

const ADMIN_PASSWORD: &str = "root-password-for-tests";
/// How long to wait for another process building the same venv.
const VENV_WAIT: Duration = Duration::from_secs(5 * 60);
/// A lock file older than this is left over from a killed run.
const STALE_LOCK: Duration = Duration::from_secs(10 * 60);

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// FNV-1a 64: a stable hash of the requirements, to key the venv by.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Removes the lock file when the venv build ends, also by a panic.
struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// A complete venv is one with the marker whose interpreter runs and finds the SDK.
fn venv_usable(dir: &Path) -> bool {
    dir.join(".complete").is_file()
        && Command::new(dir.join("bin/python"))
            .args([
                "-c",
                "import importlib.util as u, sys; \
                 sys.exit(any(u.find_spec(m) is None for m in ('openai', 'anthropic', 'google.genai')))",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn build_venv(dir: &Path, requirements: &Path) {
    if dir.exists() {
        fs::remove_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot remove the broken venv {}: {e}", dir.display()));
    }
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`python3 --version` failed ({}): {}; the Python SDK tests need Python 3",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "python3 is not installed or not on PATH ({e}); the Python SDK tests need Python 3 \
             with the venv module (Debian: apt-get install python3 python3-venv)"
        ),
    }
    run_checked(
        Command::new("python3").arg("-m").arg("venv").arg(dir),
        "creating the venv (Debian needs the python3-venv package)",
    );
    run_checked(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(requirements),
        "pip install -r tests/python/requirements.txt",
    );
    fs::write(dir.join(".complete"), b"ok\n").unwrap();
}

/// The venv for `requirements.txt`, built once and shared by every run and
/// by concurrent test processes (a `DIR.lock` file serializes the build).
fn ensure_venv() -> PathBuf {
    let requirements = python_dir().join("requirements.txt");
    let bytes = fs::read(&requirements).unwrap();
    let hash = format!("{:016x}", fnv1a64(&bytes));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pyvenv-{}", &hash[..12]));
    let lock = dir.with_extension("lock");
    let deadline = Instant::now() + VENV_WAIT;
    loop {
        if venv_usable(&dir) {
            return dir;
        }
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let _guard = LockGuard(lock.clone());
                if !venv_usable(&dir) {
                    let t = Instant::now();
                    println!("creating the Python venv {}", dir.display());
                    build_venv(&dir, &requirements);
                    println!("venv ready in {:.1}s", t.elapsed().as_secs_f64());
                }
                return dir;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let age = fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok());
                if age.is_some_and(|a| a > STALE_LOCK) {
                    println!("removing the stale lock {}", lock.display());
                    let _ = fs::remove_file(&lock);
                    continue;
                }
                assert!(
                    Instant::now() < deadline,
                    "waited {VENV_WAIT:?} for another process to build the venv {} (lock {}); \
                     remove the lock file if no test is running",
                    dir.display(),
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("cannot create the lock file {}: {e}", lock.display()),
        }
    }
}

/// Copies a child's output into `sink`, line by line.
fn drain(r: impl AsyncRead + Unpin + Send + 'static, sink: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
}

struct Service {
    child: tokio::process::Child,
    addr: String,
    logs: Arc<Mutex<String>>,
}

async fn start_service(db_url: &str, cwd: &Path) -> Service {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpt-api-proxy"))
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove("GAP_CONFIG")
        .env("GAP__SERVER__LISTEN", "127.0.0.1:0")
        .env("GAP__SERVER__SHUTDOWN_GRACE_SECS", "10")
        .env("GAP__DATABASE__URL", db_url)
        .env("GAP__ADMIN__PASSWORD", ADMIN_PASSWORD)
        .env("GAP__LOG__LEVEL", "warn")
        .env("GAP__LOG__FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    drain(child.stderr.take().unwrap(), logs.clone());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            logs.lock().unwrap().push_str(&format!("{l}\n"));
            if let Some(rest) = l.split("listening on http://").nth(1) {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await;
    let addr = match found {
        Ok(Some(a)) => a,
        other => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!(
                "the service did not print its address within 30 s ({}):\n{}",
                if other.is_err() {
                    "timed out"
                } else {
                    "stdout closed"
                },
                logs.lock().unwrap()
            );
        }
    };
    // keep reading stdout so the service never blocks on a full pipe
    drain(lines.into_inner(), logs.clone());
    Service { child, addr, logs }
}

/// SIGTERM, then wait for the drained exit (a hard kill after 30 s).
async fn stop_service(svc: &mut Service) -> Option<std::process::ExitStatus> {
    if let Some(pid) = svc.child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    match tokio::time::timeout(Duration::from_secs(30), svc.child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = svc.child.start_kill();
            let _ = svc.child.wait().await;
            None
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !self.token.is_empty() {
            r = r.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path} -> {status}: {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a user (with `balance_usd` if given) and a key for it.
    async fn user_key(&self, name: &str, balance_usd: Option<&str>) -> String {
        let mut body = json!({"username": name, "password": "password123"});
        if let Some(b) = balance_usd {
            body["balance_usd"] = json!(b);
        }
        let u = self.post("/api/users", body).await;
        let id = u["data"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no user id in {u}"));
        let k = self.post("/api/keys", json!({"user_id": id})).await;
        k["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key in {k}"))
            .to_string()
    }
}

/// A running gateway binary on a fresh SQLite database, the mock upstream
/// in process, and an admin session on the management API.
struct Gateway {
    svc: Service,
    api: Api,
    mock: mock_upstream::MockUpstream,
    _tmp: tempfile::TempDir,
}

async fn start_gateway() -> Gateway {
    let mock = mock_upstream::MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/t.db", tmp.path().display());
    let svc = start_service(&db_url, tmp.path()).await;

    // reqwest is built with `rustls-no-provider`; the app installs ring in
    // process, but this test runs the app as a separate binary
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        base: format!("http://{}", svc.addr),
        token: String::new(),
    };
    let login = api
        .post(
            "/api/auth/login",
            json!({"username": "root", "password": ADMIN_PASSWORD}),
        )
        .await;
    api.token = login["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {login}"))
        .to_string();
    Gateway {
        svc,
        api,
        mock,
        _tmp: tmp,
    }
}

/// One run of an SDK script.
struct ScriptRun {
    label: String,
    elapsed: Duration,
    /// The output, or why there is none (a time-out, a spawn error).
    out: Result<std::process::Output, String>,
}

impl ScriptRun {
    fn passed(&self) -> bool {
        self.out.as_ref().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("checks passed")
        })
    }

    fn report(&self) -> String {
        match &self.out {
            Ok(o) => format!(
                "=== {} ({}, {:.1}s)\n--- stdout\n{}--- stderr\n{}",
                self.label,
                o.status,
                self.elapsed.as_secs_f64(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            ),
            Err(e) => format!("=== {}: {e}", self.label),
        }
    }
}

/// Runs `tests/python/{script}` in the venv with `env` (the gateway's URLs
/// and keys); no SDK's own environment variables leak in.
async fn run_script(
    venv: PathBuf,
    label: String,
    script: &str,
    env: Vec<(&'static str, String)>,
) -> ScriptRun {
    const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
    let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
    cmd.arg(python_dir().join(script))
        .envs(env)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_GENAI_API_VERSION",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_GEMINI_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
    let t = Instant::now();
    let out = match tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(format!("cannot run {script}: {e}")),
        Err(_) => Err(format!("{script} ran for over {SCRIPT_TIMEOUT:?}")),
    };
    ScriptRun {
        label,
        elapsed: t.elapsed(),
        out,
    }
}

#[tokio::test]
async fn official_openai_python_sdk_works_against_the_gateway() {
    let t0 = Instant::now();
    let venv = tokio::task::spawn_blocking(ensure_venv).await.unwrap();
    let t_venv = t0.elapsed();

    let mut gw = start_gateway().await;
    let api = &gw.api;
    api.post(
        "/api/channels",
        json!({
            "name": "mock", "base_url": gw.mock.base_url(), "api_keys": ["sk-mock"],
            "models": ["gpt-4o-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct"],
        }),
    )
    .await;
    let key = api.user_key("py", Some("5")).await;
    let poor_key = api.user_key("poor", None).await;

    let addr = gw.svc.addr.clone();
    let run = run_script(
        venv,
        "openai SDK x openai channel (gpt-4o-mini)".into(),
        "test_openai_sdk.py",
        vec![
            ("GAP_BASE_URL", format!("http://{addr}/v1")),
            ("GAP_ROOT_URL", format!("http://{addr}")),
            ("GAP_API_KEY", key),
            ("GAP_POOR_KEY", poor_key),
            ("GAP_OPENAI_ONLY_CHECKS", "1".into()),
        ],
    )
    .await;

    let ledger = gw
        .api
        .call(reqwest::Method::GET, "/api/ledger/check", None)
        .await;
    let status = stop_service(&mut gw.svc).await;
    let logs = gw.svc.logs.lock().unwrap().clone();
    println!(
        "venv {:.1}s, SDK script {:.1}s, {} upstream requests; service exit: {status:?}",
        t_venv.as_secs_f64(),
        run.elapsed.as_secs_f64(),
        gw.mock.requests()
    );
    if let Ok(o) = &run.out {
        println!("{}", String::from_utf8_lossy(&o.stdout));
    }
    assert!(
        run.passed(),
        "the openai SDK script failed:\n{}\n--- service log\n{logs}",
        run.report()
    );
    assert_eq!(
        ledger["ok"],
        json!(true),
        "ledger check after the SDK run: {ledger}"
    );
}

/// The channel kinds, each serving the model `m-{kind}` from the mock.
const KINDS: [&str; 3] = ["openai", "anthropic", "gemini"];
/// The SDKs: (name, script).
const SDKS: [(&str, &str); 3] = [
    ("openai", "test_openai_sdk.py"),
    ("anthropic", "test_anthropic_sdk.py"),
    ("google-genai", "test_genai_sdk.py"),
];
/// Scripts run at once (2 cores: more only slows each one's start-up).
const PARALLEL_SCRIPTS: usize = 3;

#[tokio::test]
async fn every_official_sdk_works_against_every_channel_kind() {
    let t0 = Instant::now();
    let venv = tokio::task::spawn_blocking(ensure_venv).await.unwrap();
    let t_venv = t0.elapsed();

    let mut gw = start_gateway().await;
    let api = &gw.api;
    let mut channel_ids = Vec::new();
    for kind in KINDS {
        let base_url = match kind {
            // the gateway appends /models/{m}:generateContent to a Gemini base
            "gemini" => gw.mock.base_url().replace("/v1", "/v1beta"),
            // /chat/completions (openai) or /messages (anthropic) to the others
            _ => gw.mock.base_url(),
        };
        let model = format!("m-{kind}");
        let mut models = vec![model.clone()];
        if kind == "openai" {
            // the openai script's GAP_OPENAI_ONLY_CHECKS
            models.extend(["text-embedding-3-small", "gpt-3.5-turbo-instruct"].map(String::from));
        }
        let c = api
            .post(
                "/api/channels",
                json!({
                    "name": format!("mock-{kind}"), "kind": kind, "base_url": base_url,
                    "api_keys": ["sk-mock"], "models": models,
                }),
            )
            .await;
        channel_ids.push(
            c["data"]["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("no channel id in {c}")),
        );
        api.call(
            reqwest::Method::PUT,
            &format!("/api/prices/{model}"),
            Some(json!({"input": "1", "output": "2"})),
        )
        .await;
    }
    let key = api.user_key("py", Some("5")).await;
    let poor_key = api.user_key("poor", None).await;

    let addr = gw.svc.addr.clone();
    let t1 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL_SCRIPTS));
    let mut runs = tokio::task::JoinSet::new();
    for (i, (sdk, script)) in SDKS.into_iter().enumerate() {
        for (j, kind) in KINDS.into_iter().enumerate() {
            let mut env = vec![
                ("GAP_BASE_URL", format!("http://{addr}/v1")),
                ("GAP_ROOT_URL", format!("http://{addr}")),
                ("GAP_API_KEY", key.clone()),
                ("GAP_POOR_KEY", poor_key.clone()),
                ("GAP_MODEL", format!("m-{kind}")),
            ];
            if sdk == "openai" && kind == "openai" {
                env.push(("GAP_OPENAI_ONLY_CHECKS", "1".into()));
            }
            let label = format!("{sdk} SDK x {kind} channel (m-{kind})");
            let (venv, gate) = (venv.clone(), gate.clone());
            runs.spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                (
                    i * KINDS.len() + j,
                    run_script(venv, label, script, env).await,
                )
            });
        }
    }
    let mut results: Vec<(usize, ScriptRun)> = runs.join_all().await;
    results.sort_by_key(|(n, _)| *n);
    let t_scripts = t1.elapsed();

    let ledger = gw
        .api
        .call(reqwest::Method::GET, "/api/ledger/check", None)
        .await;
    // every request for m-{kind} went to the channel of that kind, and each
    // client dialect reached it
    let mut routing = Vec::new();
    for (kind, channel) in KINDS.into_iter().zip(&channel_ids) {
        let rows = gw
            .api
            .call(
                reqwest::Method::GET,
                &format!("/api/logs?model=m-{kind}&limit=1000"),
                None,
            )
            .await;
        let rows = rows["data"].as_array().cloned().unwrap_or_default();
        let stray: Vec<_> = rows
            .iter()
            .filter(|r| r["channel_id"] != json!(channel) && r["channel_id"] != json!(0))
            .collect();
        if !stray.is_empty() {
            routing.push(format!(
                "m-{kind}: requests served by another channel than {channel}: {stray:?}"
            ));
        }
        for endpoint in ["chat.completions", "messages", "generateContent"] {
            let served = rows.iter().any(|r| {
                r["endpoint"] == json!(endpoint)
                    && r["channel_id"] == json!(channel)
                    && r["status"] == json!(200)
                    && r["cost"].as_i64().is_some_and(|c| c > 0)
            });
            if !served {
                routing.push(format!(
                    "m-{kind}: no billed 200 `{endpoint}` request logged on channel {channel}"
                ));
            }
        }
    }
    let status = stop_service(&mut gw.svc).await;
    let logs = gw.svc.logs.lock().unwrap().clone();

    println!(
        "venv {:.1}s, 9 SDK scripts {:.1}s ({PARALLEL_SCRIPTS} at a time), {} upstream requests; \
         service exit: {status:?}",
        t_venv.as_secs_f64(),
        t_scripts.as_secs_f64(),
        gw.mock.requests()
    );
    for (_, r) in &results {
        println!(
            "{} {} ({:.1}s)",
            if r.passed() { "PASS" } else { "FAIL" },
            r.label,
            r.elapsed.as_secs_f64()
        );
    }
    let mut problems: Vec<String> = results
        .iter()
        .filter(|(_, r)| !r.passed())
        .map(|(_, r)| r.report())
        .collect();
    let failed_runs = problems.len();
    for (_, r) in results.iter().filter(|(_, r)| r.passed()) {
        if let Ok(o) = &r.out {
            print!("{}", String::from_utf8_lossy(&o.stdout));
        }
    }
    if !routing.is_empty() {
        problems.push(format!("=== request logs\n{}", routing.join("\n")));
    }
    if ledger["ok"] != json!(true) {
        problems.push(format!("=== ledger check after the SDK runs: {ledger}"));
    }
    assert!(
        problems.is_empty(),
        "{failed_runs} of {} SDK x channel kind runs failed:\n{}\n--- service log\n{logs}",
        results.len(),
        problems.join("\n")
    );
}
