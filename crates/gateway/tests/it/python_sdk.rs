//! The gateway as the official `openai` Python SDK sees it: the real
//! binary, set up through the management API, driven by
//! `tests/python/test_openai_sdk.py` in a venv made from
//! `tests/python/requirements.txt`.
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
                "import importlib.util, sys; sys.exit(importlib.util.find_spec('openai') is None)",
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
            "`python3 --version` failed ({}): {}; the openai SDK test needs Python 3",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "python3 is not installed or not on PATH ({e}); the openai SDK test needs Python 3 \
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

#[tokio::test]
async fn official_openai_python_sdk_works_against_the_gateway() {
    let t0 = Instant::now();
    let venv = tokio::task::spawn_blocking(ensure_venv).await.unwrap();
    let t_venv = t0.elapsed();

    let mock = mock_upstream::MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/t.db", tmp.path().display());
    let mut svc = start_service(&db_url, tmp.path()).await;

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
    api.post(
        "/api/channels",
        json!({
            "name": "mock", "base_url": mock.base_url(), "api_keys": ["sk-mock"],
            "models": ["gpt-4o-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct"],
        }),
    )
    .await;
    let key = api.user_key("py", Some("5")).await;
    let poor_key = api.user_key("poor", None).await;

    let script = python_dir().join("test_openai_sdk.py");
    let t1 = Instant::now();
    let run = tokio::process::Command::new(venv.join("bin/python"))
        .arg(&script)
        .env("GAP_BASE_URL", format!("http://{}/v1", svc.addr))
        .env("GAP_API_KEY", &key)
        .env("GAP_POOR_KEY", &poor_key)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await;
    let t_script = t1.elapsed();

    let ledger = api
        .call(reqwest::Method::GET, "/api/ledger/check", None)
        .await;
    let status = stop_service(&mut svc).await;
    let logs = svc.logs.lock().unwrap().clone();
    println!(
        "venv {:.1}s, SDK script {:.1}s, {} upstream requests; service exit: {status:?}",
        t_venv.as_secs_f64(),
        t_script.as_secs_f64(),
        mock.requests()
    );

    let out = out
        .unwrap_or_else(|_| panic!("the SDK script ran for over 180 s\n--- service log\n{logs}"));
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the openai SDK script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- service log\n{logs}",
        out.status
    );
    assert!(stdout.contains("checks passed"), "{stdout}\n{stderr}");
    assert_eq!(
        ledger["ok"],
        json!(true),
        "ledger check after the SDK run: {ledger}"
    );
}
