//! Who may do what in the management API: a table of every endpoint of
//! `crates/web/src/{api,auth,managed,google}.rs` with the exact status each
//! role gets (anonymous, `user`, `user_root`, `admin`, `root`), run with
//! access tokens, with session cookies + CSRF token, and with session
//! cookies but no CSRF token. Then the rules that need a sequence: only root
//! creates administrators and changes managed mode, administrators cannot
//! touch root or each other, a disabled account stops working at once, and
//! administrators can list and disable anyone's keys.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::{TestApp, backends};

/// The roles of the matrix, in the order of the `expect` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anon,
    User,
    UserRoot,
    Admin,
    Root,
}

const WHO: [Who; 5] = [Who::Anon, Who::User, Who::UserRoot, Who::Admin, Who::Root];

/// How the signed-in roles authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `Authorization: Bearer <access token>`.
    Bearer,
    /// The `gap_session` cookie and the `x-csrf-token` header.
    Cookie,
    /// The cookie without the CSRF token: every authenticated write is 403.
    CookieNoCsrf,
}

/// One endpoint call and the status each role gets.
///
/// Placeholders in `path` and `body`: `{root} {admin} {admin2} {user}
/// {managed} {other_managed} {spare}` (user ids), `{user_key} {root_key}`
/// (key ids), `{channel}` (an operator channel), `{my_own_channel}` (an own
/// channel of the `user_root` caller), `{other_own_channel}` (one of another
/// managed user), `{mock}` (the mock's base URL), `{me}` (the caller's
/// username), `{n}` (a fresh number), and `{fresh_key} {fresh_channel}
/// {fresh_my_own_channel} {fresh_price}`, made anew before each call.
struct Case {
    method: &'static str,
    path: &'static str,
    /// JSON, or "" for no body.
    body: &'static str,
    /// anon, user, user_root, admin, root.
    expect: [u16; 5],
}

const fn c(method: &'static str, path: &'static str, body: &'static str, expect: [u16; 5]) -> Case {
    Case {
        method,
        path,
        body,
        expect,
    }
}

/// Writes that answer anonymous callers 401 for another reason than a
/// missing sign-in (wrong password; the handler reads the pending session
/// cookie itself), so no CSRF token is asked for.
const CSRF_EXEMPT: &[&str] = &["/api/auth/login", "/api/auth/login/totp"];

const OWN: &str =
    r#"{"name":"own{n}","base_url":"{mock}","api_keys":["sk-mock-good"],"models":["roles-own"]}"#;
const OPERATOR_CHANNEL: &str =
    r#"{"name":"op{n}","base_url":"{mock}","api_keys":["sk-mock-good"],"models":["gpt-4o-mini"]}"#;

#[rustfmt::skip]
const CASES: &[Case] = &[
    //  method    path                                       body                                                   anon user u_root admin root
    // ---- api.rs: self --------------------------------------------------------------------------------------------------------------
    c("GET",    "/api/self",                                 "",                                                    [401, 200, 200, 200, 200]),
    c("GET",    "/api/self/logs",                            "",                                                    [401, 200, 200, 200, 200]),
    c("GET",    "/api/self/keys",                            "",                                                    [401, 200, 200, 200, 200]),
    c("POST",   "/api/self/keys",                            r#"{"name":"k{n}"}"#,                                  [401, 200, 200, 200, 200]),
    // ---- api.rs: users -------------------------------------------------------------------------------------------------------------
    c("GET",    "/api/users",                                "",                                                    [401, 403, 403, 200, 200]),
    c("POST",   "/api/users",                                r#"{"username":"new{n}","password":"password123"}"#,   [401, 403, 403, 200, 200]),
    c("POST",   "/api/users",                                r#"{"username":"adm{n}","password":"password123","role":"admin"}"#, [401, 403, 403, 403, 200]),
    c("POST",   "/api/users",                                r#"{"username":"root{n}","password":"password123","role":"root"}"#, [401, 403, 403, 403, 403]),
    c("POST",   "/api/users",                                r#"{"username":"ur{n}","password":"password123","role":"user_root"}"#, [401, 403, 403, 400, 400]),
    c("GET",    "/api/users/{user}",                         "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/users/{root}",                         "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/users/999999",                         "",                                                    [401, 403, 403, 404, 404]),
    c("PATCH",  "/api/users/{user}",                         r#"{"group":"default"}"#,                              [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/users/{user}",                         r#"{"status":1}"#,                                     [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/users/{managed}",                      r#"{"group":"default"}"#,                              [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/users/{spare}",                        r#"{"password":"spare-password-{n}"}"#,                [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/users/{root}",                         r#"{"group":"default"}"#,                              [401, 403, 403, 403, 200]),
    c("PATCH",  "/api/users/{root}",                         r#"{"status":0}"#,                                     [401, 403, 403, 403, 400]),
    c("PATCH",  "/api/users/{admin2}",                       r#"{"group":"default"}"#,                              [401, 403, 403, 403, 200]),
    c("PATCH",  "/api/users/{admin2}",                       r#"{"status":0}"#,                                     [401, 403, 403, 403, 200]),
    c("PATCH",  "/api/users/{admin2}",                       r#"{"status":1}"#,                                     [401, 403, 403, 403, 200]),
    c("PATCH",  "/api/users/{admin}",                        r#"{"group":"default"}"#,                              [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/users/999999",                         r#"{"group":"default"}"#,                              [401, 403, 403, 404, 404]),
    c("POST",   "/api/users/{user}/topup",                   r#"{"amount_usd":"1"}"#,                               [401, 403, 403, 200, 200]),
    c("POST",   "/api/users/999999/topup",                   r#"{"amount_usd":"1"}"#,                               [401, 403, 403, 404, 404]),
    c("GET",    "/api/users/{user}/ledger",                  "",                                                    [401, 403, 403, 200, 200]),
    // ---- api.rs: keys --------------------------------------------------------------------------------------------------------------
    c("GET",    "/api/keys",                                 "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/keys?user_id={root}",                  "",                                                    [401, 403, 403, 200, 200]),
    c("POST",   "/api/keys",                                 r#"{"user_id":{user},"name":"by-admin"}"#,             [401, 403, 403, 200, 200]),
    c("POST",   "/api/keys",                                 r#"{"user_id":999999,"name":"nobody"}"#,               [401, 403, 403, 404, 404]),
    c("PATCH",  "/api/keys/{user_key}",                      r#"{"name":"renamed{n}"}"#,                            [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/keys/{root_key}",                      r#"{"name":"renamed{n}"}"#,                            [401, 403, 403, 200, 200]),
    c("PATCH",  "/api/keys/999999",                          r#"{"name":"x"}"#,                                     [401, 403, 403, 404, 404]),
    c("DELETE", "/api/keys/{fresh_key}",                     "",                                                    [401, 403, 403, 200, 200]),
    // ---- api.rs: channels, prices, fallbacks, groups ------------------------------------------------------------------------------
    c("GET",    "/api/channels",                             "",                                                    [401, 403, 403, 200, 200]),
    c("POST",   "/api/channels",                             OPERATOR_CHANNEL,                                      [401, 403, 403, 200, 200]),
    c("GET",    "/api/channels/{channel}",                   "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/channels/999999",                      "",                                                    [401, 403, 403, 404, 404]),
    c("PATCH",  "/api/channels/{channel}",                   r#"{"weight":2}"#,                                     [401, 403, 403, 200, 200]),
    c("POST",   "/api/channels/{channel}/test",              "",                                                    [401, 403, 403, 200, 200]),
    c("DELETE", "/api/channels/{fresh_channel}",             "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/prices",                               "",                                                    [401, 200, 200, 200, 200]),
    c("PUT",    "/api/prices/roles-model",                   r#"{"input":"1","output":"2"}"#,                       [401, 403, 403, 200, 200]),
    c("DELETE", "/api/prices/{fresh_price}",                 "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/fallbacks",                            "",                                                    [401, 403, 403, 200, 200]),
    c("PUT",    "/api/fallbacks/gpt-4o-mini",                r#"{"fallbacks":["gpt-4o"]}"#,                         [401, 403, 403, 200, 200]),
    c("GET",    "/api/groups",                               "",                                                    [401, 403, 403, 200, 200]),
    c("PUT",    "/api/groups/vip",                           r#"{"ratio":"1.5"}"#,                                  [401, 403, 403, 200, 200]),
    // ---- api.rs: logs, usage, ledger -----------------------------------------------------------------------------------------------
    c("GET",    "/api/logs",                                 "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/usage/hourly",                         "",                                                    [401, 200, 200, 200, 200]),
    c("GET",    "/api/ledger/check",                         "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/no-such-endpoint",                     "",                                                    [404, 404, 404, 404, 404]),
    // ---- auth.rs ---------------------------------------------------------------------------------------------------------------------
    c("POST",   "/api/auth/register",                        r#"{"username":"reg{n}","password":"password123"}"#,   [201, 201, 201, 201, 201]),
    c("POST",   "/api/auth/login",                           r#"{"username":"nobody","password":"wrong-password"}"#, [401, 401, 401, 401, 401]),
    c("POST",   "/api/auth/login/totp",                      r#"{"code":"123456"}"#,                                [401, 401, 401, 401, 401]),
    c("GET",    "/api/auth/session",                         "",                                                    [401, 200, 200, 200, 200]),
    c("POST",   "/api/auth/verify-email",                    r#"{"token":"no-such-token"}"#,                        [400, 400, 400, 400, 400]),
    c("PUT",    "/api/self/email",                           r#"{"email":"{me}@example.com"}"#,                     [401, 200, 200, 200, 200]),
    c("POST",   "/api/auth/resend-verification",             "",                                                    [401, 200, 200, 200, 200]),
    // no mail is configured: 503 mail_unavailable (deliberate, see auth.rs)
    c("POST",   "/api/auth/password-reset",                  r#"{"email":"nobody@example.com"}"#,                   [503, 503, 503, 503, 503]),
    c("POST",   "/api/auth/password-reset/confirm",          r#"{"token":"no-such-token","password":"password123"}"#, [400, 400, 400, 400, 400]),
    c("POST",   "/api/self/password",                        r#"{"current_password":"wrong-password","new_password":"password456"}"#, [401, 403, 403, 403, 403]),
    c("PATCH",  "/api/self/profile",                         r#"{"display_name":"Tester {n}"}"#,                    [401, 200, 200, 200, 200]),
    c("GET",    "/api/self/sessions",                        "",                                                    [401, 200, 200, 200, 200]),
    c("POST",   "/api/self/totp/setup",                      "",                                                    [401, 200, 200, 200, 200]),
    c("POST",   "/api/self/totp/enable",                     r#"{"code":"abcdef"}"#,                                [401, 400, 400, 400, 400]),
    c("POST",   "/api/self/totp/disable",                    "{}",                                                  [401, 200, 200, 200, 200]),
    // ---- google.rs (not configured here) ---------------------------------------------------------------------------------------------
    c("GET",    "/api/auth/google/start",                    "",                                                    [404, 404, 404, 404, 404]),
    c("GET",    "/api/auth/google/start?purpose=link",       "",                                                    [404, 404, 404, 404, 404]),
    c("GET",    "/api/auth/google/callback?code=x&state=y",  "",                                                    [400, 400, 400, 400, 400]),
    c("GET",    "/api/auth/google/config",                   "",                                                    [200, 200, 200, 200, 200]),
    c("DELETE", "/api/self/google",                          "",                                                    [401, 200, 200, 200, 200]),
    // ---- managed.rs ------------------------------------------------------------------------------------------------------------------
    c("POST",   "/api/users/{spare}/managed",                r#"{"enabled":true,"route":"own_only","platform_fee":"0.1"}"#, [401, 403, 403, 403, 200]),
    c("POST",   "/api/users/{spare}/managed",                r#"{"enabled":false}"#,                                [401, 403, 403, 403, 200]),
    c("POST",   "/api/users/{spare}/managed",                r#"{"enabled":true,"route":"sideways"}"#,              [401, 403, 403, 403, 400]),
    c("POST",   "/api/users/{spare}/managed",                r#"{"enabled":true,"platform_fee":"-1"}"#,             [401, 403, 403, 403, 400]),
    c("POST",   "/api/users/{admin2}/managed",               r#"{"enabled":true}"#,                                 [401, 403, 403, 403, 400]),
    c("POST",   "/api/users/{root}/managed",                 r#"{"enabled":true}"#,                                 [401, 403, 403, 403, 400]),
    c("POST",   "/api/users/999999/managed",                 r#"{"enabled":true}"#,                                 [401, 403, 403, 403, 404]),
    c("GET",    "/api/users/{managed}/channels",             "",                                                    [401, 403, 403, 200, 200]),
    c("GET",    "/api/self/channels",                        "",                                                    [401, 403, 200, 403, 403]),
    c("POST",   "/api/self/channels",                        OWN,                                                   [401, 403, 201, 403, 403]),
    c("GET",    "/api/self/channels/{my_own_channel}",       "",                                                    [401, 403, 200, 403, 403]),
    c("GET",    "/api/self/channels/{other_own_channel}",    "",                                                    [401, 403, 404, 403, 403]),
    c("GET",    "/api/self/channels/0",                      "",                                                    [401, 403, 404, 403, 403]),
    c("PATCH",  "/api/self/channels/{my_own_channel}",       r#"{"name":"renamed{n}"}"#,                            [401, 403, 200, 403, 403]),
    c("PATCH",  "/api/self/channels/{other_own_channel}",    r#"{"name":"stolen"}"#,                                [401, 403, 404, 403, 403]),
    c("DELETE", "/api/self/channels/{other_own_channel}",    "",                                                    [401, 403, 404, 403, 403]),
    c("DELETE", "/api/self/channels/{fresh_my_own_channel}", "",                                                    [401, 403, 200, 403, 403]),
];

/// A signed-in role: an access token and a browser session from one sign-in.
#[derive(Clone, Default)]
struct Creds {
    username: String,
    token: String,
    cookie: String,
    csrf: String,
}

/// Signs in; returns the access token, session cookie and CSRF token.
async fn sign_in(t: &TestApp, username: &str, password: &str) -> Creds {
    let r = t
        .http
        .post(t.url("/api/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "sign-in of {username}");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("gap_session="))
        .map(|rest| rest.split(';').next().unwrap().to_string())
        .expect("a session cookie");
    let v: Value = r.json().await.unwrap();
    Creds {
        username: username.to_string(),
        token: v["token"].as_str().unwrap().to_string(),
        cookie,
        csrf: v["csrf_token"].as_str().unwrap().to_string(),
    }
}

/// Sends a call as `creds` (`None`: anonymous) in `mode`.
async fn send(
    t: &TestApp,
    creds: Option<&Creds>,
    mode: Mode,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut r = t.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        t.url(path),
    );
    if let Some(c) = creds {
        match mode {
            Mode::Bearer => r = r.bearer_auth(&c.token),
            Mode::Cookie => {
                r = r
                    .header("cookie", format!("gap_session={}", c.cookie))
                    .header("x-csrf-token", &c.csrf);
            }
            Mode::CookieNoCsrf => r = r.header("cookie", format!("gap_session={}", c.cookie)),
        }
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn as_root(t: &TestApp, method: &str, path: &str, body: Value) -> Value {
    t.admin(method, path, Some(body)).await
}

/// Everything the matrix refers to.
struct World {
    creds: HashMap<&'static str, Creds>,
    ids: HashMap<&'static str, String>,
    n: u64,
}

fn who_name(w: Who) -> &'static str {
    match w {
        Who::Anon => "anonymous",
        Who::User => "user",
        Who::UserRoot => "user_root",
        Who::Admin => "admin",
        Who::Root => "root",
    }
}

impl World {
    async fn build(t: &TestApp) -> World {
        let mut ids: HashMap<&'static str, String> = HashMap::new();
        for (slot, name) in [("admin", "ada"), ("admin2", "abe")] {
            let v = as_root(
                t,
                "POST",
                "/api/users",
                json!({"username": name, "password": "password123", "role": "admin"}),
            )
            .await;
            assert_eq!(v["data"]["role"], "admin");
            ids.insert(slot, v["data"]["id"].as_i64().unwrap().to_string());
        }
        let (user, _) = t.user_with_key("uma", "5").await;
        let (managed, _) = t.user_with_key("mona", "5").await;
        let (other, _) = t.user_with_key("otto", "5").await;
        let (spare, _) = t.user_with_key("sam", "1").await;
        for uid in [managed, other] {
            let v = as_root(
                t,
                "POST",
                &format!("/api/users/{uid}/managed"),
                json!({"enabled": true, "route": "own_then_shared", "platform_fee": "0"}),
            )
            .await;
            assert_eq!(v["data"]["role"], "user_root");
        }
        let root = t.admin("GET", "/api/self", None).await["id"]
            .as_i64()
            .unwrap();
        let user_key = t
            .admin("GET", &format!("/api/keys?user_id={user}"), None)
            .await["data"][0]["id"]
            .as_i64()
            .unwrap();
        let root_key = as_root(
            t,
            "POST",
            "/api/keys",
            json!({"user_id": root, "name": "root's"}),
        )
        .await["data"]["id"]
            .as_i64()
            .unwrap();
        let channel = t.add_mock_channel("op", &["gpt-4o-mini"], 0).await;
        for (k, v) in [
            ("root", root),
            ("user", user),
            ("managed", managed),
            ("other_managed", other),
            ("spare", spare),
            ("user_key", user_key),
            ("root_key", root_key),
            ("channel", channel),
        ] {
            ids.insert(k, v.to_string());
        }
        ids.insert("mock", t.mock.base_url());

        let mut creds = HashMap::new();
        creds.insert("root", sign_in(t, "root", "root-password-for-tests").await);
        creds.insert("admin", sign_in(t, "ada", "password123").await);
        creds.insert("user", sign_in(t, "uma", "password123").await);
        creds.insert("user_root", sign_in(t, "mona", "password123").await);
        let otto = sign_in(t, "otto", "password123").await;
        let mut w = World { creds, ids, n: 0 };
        let mine = w.own_channel(t, w.creds["user_root"].clone()).await;
        let theirs = w.own_channel(t, otto).await;
        w.ids.insert("my_own_channel", mine.to_string());
        w.ids.insert("other_own_channel", theirs.to_string());
        w
    }

    fn next(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    async fn own_channel(&mut self, t: &TestApp, owner: Creds) -> i64 {
        let n = self.next();
        let (st, v) = send(
            t,
            Some(&owner),
            Mode::Bearer,
            "POST",
            "/api/self/channels",
            Some(
                json!({"name": format!("own{n}"), "base_url": t.mock.base_url(),
                        "api_keys": ["sk-mock-good"], "models": ["roles-own"]}),
            ),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        serde_json::from_str::<Value>(&v).unwrap()["data"]["id"]
            .as_i64()
            .unwrap()
    }

    /// Fills the placeholders of a template, making fresh resources when asked.
    async fn expand(&mut self, t: &TestApp, template: &str, who: Who) -> String {
        let mut s = template.to_string();
        if s.contains("{fresh_key}") {
            let v = as_root(
                t,
                "POST",
                "/api/keys",
                json!({"user_id": self.ids["spare"].parse::<i64>().unwrap(), "name": "fresh"}),
            )
            .await;
            s = s.replace(
                "{fresh_key}",
                &v["data"]["id"].as_i64().unwrap().to_string(),
            );
        }
        if s.contains("{fresh_channel}") {
            let id = t.add_mock_channel("fresh", &["gpt-4o-mini"], 0).await;
            s = s.replace("{fresh_channel}", &id.to_string());
        }
        if s.contains("{fresh_price}") {
            let model = format!("fresh-price-{}", self.next());
            as_root(
                t,
                "PUT",
                &format!("/api/prices/{model}"),
                json!({"input": "1", "output": "1"}),
            )
            .await;
            s = s.replace("{fresh_price}", &model);
        }
        if s.contains("{fresh_my_own_channel}") {
            let id = self.own_channel(t, self.creds["user_root"].clone()).await;
            s = s.replace("{fresh_my_own_channel}", &id.to_string());
        }
        if s.contains("{n}") {
            let n = self.next();
            s = s.replace("{n}", &n.to_string());
        }
        if s.contains("{me}") {
            let me = match who {
                Who::Anon => "anonymous".to_string(),
                w => self.creds[who_name(w)].username.clone(),
            };
            s = s.replace("{me}", &me);
        }
        for (k, v) in &self.ids {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        assert!(
            !s.contains("{fresh") && !s.contains("{me}"),
            "unexpanded placeholder in {s}"
        );
        s
    }
}

/// What a role gets in a mode: with the cookie but no CSRF token, every
/// write that needs a signed-in caller is refused with 403.
fn expected(case: &Case, who: Who, mode: Mode) -> u16 {
    let i = WHO.iter().position(|w| *w == who).unwrap();
    let base = case.expect[i];
    let authenticated_write =
        case.method != "GET" && case.expect[0] == 401 && !CSRF_EXEMPT.contains(&case.path);
    if mode == Mode::CookieNoCsrf && who != Who::Anon && authenticated_write {
        403
    } else {
        base
    }
}

#[tokio::test]
async fn role_matrix_over_every_management_endpoint() {
    for backend in backends() {
        let t = TestApp::spawn_with(backend, |c| c.accounts.allow_private_upstreams = true).await;
        let mut w = World::build(&t).await;
        let mut failures: Vec<String> = Vec::new();
        let mut server_errors: Vec<String> = Vec::new();
        let mut calls = 0;
        for mode in [Mode::Bearer, Mode::Cookie, Mode::CookieNoCsrf] {
            for case in CASES {
                for who in WHO {
                    let path = w.expand(&t, case.path, who).await;
                    let body = if case.body.is_empty() {
                        None
                    } else {
                        let text = w.expand(&t, case.body, who).await;
                        Some(serde_json::from_str::<Value>(&text).unwrap_or_else(|e| {
                            panic!("bad body template {}: {e}: {text}", case.body)
                        }))
                    };
                    let creds = match who {
                        Who::Anon => None,
                        w2 => Some(w.creds[who_name(w2)].clone()),
                    };
                    let (st, text) =
                        send(&t, creds.as_ref(), mode, case.method, &path, body.clone()).await;
                    calls += 1;
                    let want = expected(case, who, mode);
                    let line = format!(
                        "[{mode:?}] {} {} (template {}) body {} as {}: expected {want}, got {st}: {}",
                        case.method,
                        path,
                        case.path,
                        body.map(|b| b.to_string()).unwrap_or_default(),
                        who_name(who),
                        text.chars().take(300).collect::<String>()
                    );
                    if st >= 500 && want < 500 {
                        server_errors.push(line.clone());
                    }
                    if st != want {
                        failures.push(line);
                    } else if mode == Mode::CookieNoCsrf && want == 403 && who != Who::Anon {
                        // refused for the right reason where a caller could otherwise pass
                        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        let allowed_otherwise = expected(case, who, Mode::Cookie) != 403;
                        if allowed_otherwise && v["error"]["code"] != "csrf_failed" {
                            failures.push(format!("{line} (expected code csrf_failed)"));
                        }
                    }
                }
            }
        }
        assert!(calls >= CASES.len() * 15);
        assert!(
            server_errors.is_empty(),
            "5xx answers (bugs):\n{}",
            server_errors.join("\n")
        );
        assert!(
            failures.is_empty(),
            "{} of {calls} calls got the wrong status:\n{}",
            failures.len(),
            failures.join("\n")
        );

        // sign-out ends just the session or token used; sign-out everywhere all
        for who in [Who::User, Who::UserRoot, Who::Admin, Who::Root] {
            let name = w.creds[who_name(who)].username.clone();
            let pw = if who == Who::Root {
                "root-password-for-tests"
            } else {
                "password123"
            };
            let a = sign_in(&t, &name, pw).await;
            let b = sign_in(&t, &name, pw).await;
            let (st, _) = send(&t, Some(&a), Mode::Bearer, "POST", "/api/auth/logout", None).await;
            assert_eq!(st, 200, "{name} logout");
            let (st, _) = send(&t, Some(&a), Mode::Bearer, "GET", "/api/self", None).await;
            assert_eq!(st, 401, "{name}: the token used to sign out is dead");
            let (st, _) = send(&t, Some(&b), Mode::Bearer, "GET", "/api/self", None).await;
            assert_eq!(st, 200, "{name}: another sign-in still works");
            let (st, _) = send(
                &t,
                Some(&b),
                Mode::Cookie,
                "POST",
                "/api/auth/logout-all",
                None,
            )
            .await;
            assert_eq!(st, 200, "{name} logout-all");
            for mode in [Mode::Bearer, Mode::Cookie] {
                let (st, _) = send(&t, Some(&b), mode, "GET", "/api/self", None).await;
                assert_eq!(st, 401, "{name} {mode:?}: signed out everywhere");
                let (st, _) = send(
                    &t,
                    Some(&w.creds[who_name(who)]),
                    mode,
                    "GET",
                    "/api/self",
                    None,
                )
                .await;
                assert_eq!(st, 401, "{name} {mode:?}: the matrix's sign-in ended too");
            }
        }
        for path in ["/api/auth/logout", "/api/auth/logout-all"] {
            let (st, _) = send(&t, None, Mode::Bearer, "POST", path, None).await;
            assert_eq!(st, 401, "anonymous {path}");
        }
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// Relay status for an API key (body read).
async fn relay_status(t: &TestApp, key: &str) -> (u16, Value) {
    let r = t.chat(key, &chat()).await;
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn administrators_cannot_touch_root_or_each_other_but_can_disable_users() {
    for backend in backends() {
        let t = TestApp::spawn(backend).await;
        t.add_mock_channel("m", &["gpt-4o-mini"], 0).await;
        for name in ["ada", "abe"] {
            t.admin(
                "POST",
                "/api/users",
                Some(json!({"username": name, "password": "password123", "role": "admin"})),
            )
            .await;
        }
        let ada = sign_in(&t, "ada", "password123").await;
        let abe = sign_in(&t, "abe", "password123").await;
        let root_id = t.admin("GET", "/api/self", None).await["id"]
            .as_i64()
            .unwrap();
        let abe_id = send(&t, Some(&abe), Mode::Bearer, "GET", "/api/self", None)
            .await
            .1;
        let abe_id = serde_json::from_str::<Value>(&abe_id).unwrap()["id"]
            .as_i64()
            .unwrap();
        let (vid, vkey) = t.user_with_key("victim", "1").await;
        let victim = sign_in(&t, "victim", "password123").await;
        assert_eq!(relay_status(&t, &vkey).await.0, 200);

        let call = |creds: &Creds, method: &'static str, path: String, body: Value| {
            let creds = creds.clone();
            let t = &t;
            async move {
                let (st, text) =
                    send(t, Some(&creds), Mode::Bearer, method, &path, Some(body)).await;
                (
                    st,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                )
            }
        };

        // an admin cannot change or disable root or another admin
        for (target, name) in [(root_id, "root"), (abe_id, "abe")] {
            for body in [
                json!({"status": 0}),
                json!({"password": "taken-over-1"}),
                json!({"group": "vip"}),
            ] {
                let (st, v) =
                    call(&ada, "PATCH", format!("/api/users/{target}"), body.clone()).await;
                assert_eq!(st, 403, "ada PATCH {name} {body}: {v}");
                assert_eq!(v["error"]["code"], "forbidden");
            }
            let (st, v) = call(
                &ada,
                "POST",
                format!("/api/users/{target}/managed"),
                json!({"enabled": true}),
            )
            .await;
            assert_eq!(st, 403, "{v}");
        }
        assert_eq!(t.admin("GET", "/api/self", None).await["status"], 1);
        let (st, _) = send(&t, Some(&abe), Mode::Bearer, "GET", "/api/users", None).await;
        assert_eq!(st, 200, "abe is untouched");
        let (st, _) = t
            .post_json(
                "/api/auth/login",
                "",
                &json!({"username": "root", "password": "root-password-for-tests"}),
            )
            .await;
        assert_eq!(st, 200, "root's password is unchanged");
        // ...nor create administrators, nor change managed mode
        for role in ["admin", "root"] {
            let (st, v) = call(
                &ada,
                "POST",
                "/api/users".into(),
                json!({"username": format!("x{role}"), "password": "password123", "role": role}),
            )
            .await;
            assert_eq!(st, 403, "ada creates {role}: {v}");
        }
        let (st, v) = call(
            &ada,
            "POST",
            format!("/api/users/{vid}/managed"),
            json!({"enabled": true}),
        )
        .await;
        assert_eq!(st, 403, "{v}");
        assert_eq!(
            t.admin("GET", &format!("/api/users/{vid}"), None).await["data"]["role"],
            "user"
        );
        // ...and cannot disable themselves
        let ada_id = send(&t, Some(&ada), Mode::Bearer, "GET", "/api/self", None)
            .await
            .1;
        let ada_id = serde_json::from_str::<Value>(&ada_id).unwrap()["id"]
            .as_i64()
            .unwrap();
        let (st, _) = call(
            &ada,
            "PATCH",
            format!("/api/users/{ada_id}"),
            json!({"status": 0}),
        )
        .await;
        assert_eq!(st, 400);

        // an admin disables a user: token, session and API key stop at once
        let (st, v) = call(
            &ada,
            "PATCH",
            format!("/api/users/{vid}"),
            json!({"status": 0}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["data"]["status"], 0);
        for mode in [Mode::Bearer, Mode::Cookie] {
            for (method, path) in [
                ("GET", "/api/self"),
                ("GET", "/api/auth/session"),
                ("POST", "/api/self/keys"),
            ] {
                let body = (method == "POST").then(|| json!({"name": "after"}));
                let (st, text) = send(&t, Some(&victim), mode, method, path, body).await;
                assert!(
                    st == 401 || st == 403,
                    "disabled user {mode:?} {method} {path}: {st} {text}"
                );
            }
        }
        let (st, v) = relay_status(&t, &vkey).await;
        assert_eq!(st, 401, "{v}");
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        let r = t
            .http
            .get(t.url("/v1/models"))
            .bearer_auth(&vkey)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let (st, v) = t
            .post_json(
                "/api/auth/login",
                "",
                &json!({"username": "victim", "password": "password123"}),
            )
            .await;
        assert_eq!(st, 403, "{v}");
        assert_eq!(v["error"]["code"], "user_disabled");

        // re-enabled: the key works again; the old sign-in stays ended
        let (st, _) = call(
            &ada,
            "PATCH",
            format!("/api/users/{vid}"),
            json!({"status": 1}),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(relay_status(&t, &vkey).await.0, 200);
        let (st, _) = send(&t, Some(&victim), Mode::Bearer, "GET", "/api/self", None).await;
        assert_eq!(st, 401, "disabling signed the user out");
        let again = sign_in(&t, "victim", "password123").await;
        let (st, _) = send(&t, Some(&again), Mode::Bearer, "GET", "/api/self", None).await;
        assert_eq!(st, 200);

        // root disables an admin: the admin's sign-in ends at once
        let v = t
            .admin(
                "PATCH",
                &format!("/api/users/{ada_id}"),
                Some(json!({"status": 0})),
            )
            .await;
        assert_eq!(v["data"]["status"], 0);
        for mode in [Mode::Bearer, Mode::Cookie] {
            let (st, _) = send(&t, Some(&ada), mode, "GET", "/api/users", None).await;
            assert!(st == 401 || st == 403, "disabled admin {mode:?}: {st}");
            let (st, _) = send(
                &t,
                Some(&ada),
                mode,
                "PATCH",
                &format!("/api/users/{vid}"),
                Some(json!({"status": 0})),
            )
            .await;
            assert!(st == 401 || st == 403, "disabled admin {mode:?}: {st}");
        }
        assert_eq!(
            relay_status(&t, &vkey).await.0,
            200,
            "the disabled admin did nothing"
        );
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn administrators_list_and_disable_anyones_keys() {
    for backend in backends() {
        let t = TestApp::spawn(backend).await;
        t.add_mock_channel("m", &["gpt-4o-mini"], 0).await;
        t.admin(
            "POST",
            "/api/users",
            Some(json!({"username": "ada", "password": "password123", "role": "admin"})),
        )
        .await;
        let ada = sign_in(&t, "ada", "password123").await;
        let (kim, kim_key) = t.user_with_key("kim", "1").await;
        let (_, lee_key) = t.user_with_key("lee", "1").await;
        let root_id = t.admin("GET", "/api/self", None).await["id"]
            .as_i64()
            .unwrap();
        t.admin(
            "POST",
            &format!("/api/users/{root_id}/topup"),
            Some(json!({"amount_usd": "1"})),
        )
        .await;
        let v = t
            .admin(
                "POST",
                "/api/keys",
                Some(json!({"user_id": root_id, "name": "root's"})),
            )
            .await;
        let (root_key_id, root_key) = (
            v["data"]["id"].as_i64().unwrap(),
            v["key"].as_str().unwrap().to_string(),
        );

        // the admin lists every key, never the secrets
        let (st, text) = send(&t, Some(&ada), Mode::Bearer, "GET", "/api/keys", None).await;
        assert_eq!(st, 200, "{text}");
        for secret in [&kim_key, &lee_key, &root_key] {
            assert!(!text.contains(secret.as_str()), "a key secret is listed");
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        let rows = v["data"].as_array().unwrap();
        let kim_key_id = rows.iter().find(|k| k["user_id"] == kim).unwrap()["id"]
            .as_i64()
            .unwrap();
        assert!(rows.iter().any(|k| k["id"] == root_key_id));
        // a user sees only their own keys
        let kim_creds = sign_in(&t, "kim", "password123").await;
        let (_, text) = send(
            &t,
            Some(&kim_creds),
            Mode::Bearer,
            "GET",
            "/api/self/keys",
            None,
        )
        .await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["user_id"] == kim),
            "{v}"
        );
        assert_eq!(v["data"].as_array().unwrap().len(), 1);

        // disable a user's key and root's key: refused at the relay at once
        for (id, key) in [(kim_key_id, &kim_key), (root_key_id, &root_key)] {
            assert_eq!(relay_status(&t, key).await.0, 200);
            let (st, text) = send(
                &t,
                Some(&ada),
                Mode::Bearer,
                "PATCH",
                &format!("/api/keys/{id}"),
                Some(json!({"status": 0})),
            )
            .await;
            assert_eq!(st, 200, "{text}");
            let (st, v) = relay_status(&t, key).await;
            assert_eq!(st, 401, "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains("disabled"),
                "{v}"
            );
            let (st, _) = send(
                &t,
                Some(&ada),
                Mode::Bearer,
                "PATCH",
                &format!("/api/keys/{id}"),
                Some(json!({"status": 1})),
            )
            .await;
            assert_eq!(st, 200);
            assert_eq!(relay_status(&t, key).await.0, 200);
        }
        // a status other than 0 or 1 is refused
        let (st, _) = send(
            &t,
            Some(&ada),
            Mode::Bearer,
            "PATCH",
            &format!("/api/keys/{kim_key_id}"),
            Some(json!({"status": 7})),
        )
        .await;
        assert_eq!(st, 400);
        // users cannot use the key administration
        for (method, path) in [
            ("GET", "/api/keys".to_string()),
            ("PATCH", format!("/api/keys/{root_key_id}")),
            ("DELETE", format!("/api/keys/{root_key_id}")),
        ] {
            let body = (method == "PATCH").then(|| json!({"status": 0}));
            let (st, _) = send(&t, Some(&kim_creds), Mode::Bearer, method, &path, body).await;
            assert_eq!(st, 403, "kim {method} {path}");
        }
        assert_eq!(relay_status(&t, &root_key).await.0, 200);
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn a_deleted_key_stays_deleted() {
    for backend in backends() {
        let t = TestApp::spawn(backend).await;
        t.add_mock_channel("m", &["gpt-4o-mini"], 0).await;
        let (uid, key) = t.user_with_key("kim", "1").await;
        let id = t
            .admin("GET", &format!("/api/keys?user_id={uid}"), None)
            .await["data"][0]["id"]
            .as_i64()
            .unwrap();
        assert_eq!(relay_status(&t, &key).await.0, 200);
        t.admin("DELETE", &format!("/api/keys/{id}"), None).await;
        let (st, v) = relay_status(&t, &key).await;
        assert_eq!(st, 401, "{v}");
        // "Disables a key for good" (storage::Store::delete_api_key): a later
        // PATCH must not bring it back
        let (st, v) = t
            .admin_raw(
                "PATCH",
                &format!("/api/keys/{id}"),
                Some(json!({"status": 1})),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (relay, _) = relay_status(&t, &key).await;
        // BUG: storage::Store::update_api_key (crates/storage/src/store.rs,
        // ~line 646) updates a deleted key (status -1) like any other, so
        // PATCH {"status":1} revives it and the relay accepts it again.
        assert_eq!(
            relay, 401,
            "a deleted key was revived by PATCH (answer {st} {v}) and works at the relay"
        );
        assert_eq!(st, 404, "PATCH of a deleted key: {v}");
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}
