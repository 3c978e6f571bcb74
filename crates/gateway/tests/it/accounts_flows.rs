//! Accounts end to end, as a browser and an API client use them: sign-up
//! with e-mail verification through a real SMTP conversation, sessions and
//! CSRF, password reset, sign-out everywhere, two-factor sign-in, and
//! Google sign-in against a stand-in identity provider that signs real
//! tokens. Every flow runs on SQLite and (with `TEST_DATABASE_URL`) on
//! PostgreSQL.

use std::time::Duration;

use accounts::i18n::Locale;
use accounts::mail::{SmtpConfig, Template, TlsMode};
use mock_services::idp::{MockIdp, TestKey, TestUser};
use mock_services::smtp::SmtpSink;
use serde_json::{Value, json};
use test_support::{TestApp, backends};

/// A browser: keeps the session cookie and sends the CSRF token.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Browser {
    fn new(t: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: t.url(""),
            cookie: None,
            csrf: None,
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, k: &'static str, v: &str) -> Browser {
        self.headers.push((k, v.to_string()));
        self
    }

    fn absorb(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            if let Some(rest) = v.strip_prefix("gap_session=") {
                let value = rest.split(';').next().unwrap();
                self.cookie = (!value.is_empty()).then(|| value.to_string());
            }
        }
    }

    async fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> reqwest::Response {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        };
        let mut r = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", format!("gap_session={c}"));
        }
        if csrf && let Some(t) = &self.csrf {
            r = r.header("x-csrf-token", t);
        }
        for (k, v) in &self.headers {
            r = r.header(*k, v);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        self.absorb(&resp);
        resp
    }

    /// `POST /api/auth/login` with a username (or e-mail) and password.
    async fn login(&mut self, user: &str, password: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/api/auth/login",
            Some(json!({"username": user, "password": password})),
        )
        .await
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let r = self.raw(method, path, body, true).await;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(t) = v["csrf_token"].as_str() {
            self.csrf = Some(t.to_string());
        }
        (status, v)
    }
}

fn smtp_for(sink: &SmtpSink) -> SmtpConfig {
    let mut c = SmtpConfig::new("127.0.0.1", "Gateway <noreply@example.com>");
    c.port = sink.port();
    c.tls = TlsMode::None;
    c
}

async fn one_mail(sink: &SmtpSink, n: usize) -> mock_services::smtp::ReceivedMail {
    let got = sink.wait_for(n, Duration::from_secs(10)).await;
    assert!(got.len() >= n, "expected {n} mails, got {}", got.len());
    got[n - 1].clone()
}

#[tokio::test]
async fn sign_up_verify_sign_in_create_key_and_call_the_relay() {
    for backend in backends() {
        let sink = SmtpSink::start().await.unwrap();
        let smtp = smtp_for(&sink);
        let t = TestApp::spawn_with(backend, |c| {
            c.accounts.email_verification = "required".into();
            c.accounts.smtp = Some(smtp);
            c.accounts.region_header = "CF-IPCountry".into();
            c.accounts.site_name = "Example AI".into();
        })
        .await;
        t.add_mock_channel("m", &["gpt-4o-mini"], 0).await;
        let mut b = Browser::new(&t).with_header("cf-ipcountry", "JP");

        // an e-mail address is required here
        let (st, v) = b
            .call(
                "POST",
                "/api/auth/register",
                Some(json!({"username": "hana", "password": "correct horse 1"})),
            )
            .await;
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("e-mail"));

        let (st, v) = b
            .call(
                "POST",
                "/api/auth/register",
                Some(json!({"username": "hana", "password": "correct horse 1", "email": "Hana@Example.com"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["verification_sent"], true);
        assert_eq!(v["data"]["email"], "hana@example.com");
        assert_eq!(v["data"]["register_region"], "JP");
        assert_eq!(v["data"]["language"], "ja");
        assert!(
            b.cookie.is_none(),
            "no session before the address is verified"
        );

        // the same address again is refused with a message that says why
        let (st, v) = b
            .call(
                "POST",
                "/api/auth/register",
                Some(json!({"username": "hana2", "password": "correct horse 1", "email": "hana@example.com"})),
            )
            .await;
        assert_eq!(st, 409, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("e-mail"));

        // sign-in is refused until the address is verified
        let (st, v) = b.login("hana", "correct horse 1").await;
        assert_eq!(st, 403, "{v}");
        assert_eq!(v["error"]["code"], "email_not_verified");

        // the mail: in Japanese (the region's language), with the link
        let mail = one_mail(&sink, 1).await;
        assert_eq!(mail.to, vec!["hana@example.com".to_string()]);
        let link = mail
            .link_starting_with(&t.url("/auth/verify-email?token="))
            .expect("verification link");
        let (subject, _) = Template::verify_email(Locale::Ja, "Example AI", &link, 24);
        assert_eq!(mail.subject().unwrap(), subject);
        let page = b.raw("GET", &link, None, false).await;
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("hana@example.com"));
        // single use
        assert_eq!(b.raw("GET", &link, None, false).await.status(), 400);

        // sign in (by e-mail address), then act as the browser does
        let (st, v) = b.login("HANA@example.com", "correct horse 1").await;
        assert_eq!(st, 200, "{v}");
        assert!(b.cookie.is_some());
        let token = v["token"].as_str().unwrap().to_string();
        let (st, v) = b.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 200);
        assert_eq!(v["user"]["email_verified"], true);
        let uid = v["user"]["id"].as_i64().unwrap();

        // a write without the CSRF token, or from another origin, is refused
        let r = b
            .raw("POST", "/api/self/keys", Some(json!({"name": "k"})), false)
            .await;
        assert_eq!(r.status(), 403);
        let mut evil = Browser::new(&t).with_header("origin", "https://evil.example");
        evil.cookie = b.cookie.clone();
        evil.csrf = b.csrf.clone();
        let (st, v) = evil
            .call("POST", "/api/self/keys", Some(json!({"name": "k"})))
            .await;
        assert_eq!(st, 403, "{v}");
        assert_eq!(v["error"]["code"], "csrf_failed");

        let (st, v) = b
            .call("POST", "/api/self/keys", Some(json!({"name": "laptop"})))
            .await;
        assert_eq!(st, 200, "{v}");
        let key = v["key"].as_str().unwrap().to_string();

        t.admin(
            "POST",
            &format!("/api/users/{uid}/topup"),
            Some(json!({"amount_usd": "1"})),
        )
        .await;
        let r = t
            .chat(
                &key,
                &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert!(t.balance(uid).await < 1_000_000);

        // sign out everywhere: the cookie and the access token stop working
        let cookie_before = b.cookie.clone();
        let (st, _) = b.call("POST", "/api/auth/logout-all", None).await;
        assert_eq!(st, 200);
        let r = t
            .http
            .get(t.url("/api/self"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let mut old = Browser::new(&t);
        old.cookie = cookie_before;
        let (st, _) = old.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 401);
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn password_reset_by_link_works_once_and_signs_out_everywhere() {
    for backend in backends() {
        let sink = SmtpSink::start().await.unwrap();
        let smtp = smtp_for(&sink);
        let t = TestApp::spawn_with(backend, |c| c.accounts.smtp = Some(smtp)).await;
        let mut b = Browser::new(&t).with_header("accept-language", "pt-BR,pt;q=0.9,en;q=0.5");
        let (st, v) = b
            .call(
                "POST",
                "/api/auth/register",
                Some(json!({"username": "joao", "password": "first password", "email": "joao@example.com"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["data"]["language"], "pt-BR");
        assert_eq!(v["data"]["register_region"], "BR");
        assert!(
            b.cookie.is_some(),
            "verification is optional here: signed in"
        );
        let _verification = one_mail(&sink, 1).await;

        // an unknown address gets the same answer and no mail
        let (st, v_unknown) = b
            .call(
                "POST",
                "/api/auth/password-reset",
                Some(json!({"email": "nobody@example.com"})),
            )
            .await;
        assert_eq!(st, 200);
        let (st, v_known) = b
            .call(
                "POST",
                "/api/auth/password-reset",
                Some(json!({"email": "joao@example.com"})),
            )
            .await;
        assert_eq!(st, 200);
        assert_eq!(v_unknown, v_known);
        let mail = one_mail(&sink, 2).await;
        assert_eq!(sink.messages().len(), 2);
        let (subject, _) = Template::reset_password(Locale::PtBr, "gpt-api-proxy", "", 1);
        assert_eq!(mail.subject().unwrap(), subject);
        let link = mail
            .link_starting_with(&t.url("/auth/reset-password?token="))
            .unwrap();
        let token = link.split("token=").nth(1).unwrap().to_string();

        // the page shows a form
        let page = b.raw("GET", &link, None, false).await;
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<form"));
        // a too-short password does not use up the link
        let (st, _) = b
            .call(
                "POST",
                "/api/auth/password-reset/confirm",
                Some(json!({"token": token, "password": "short"})),
            )
            .await;
        assert_eq!(st, 400);
        let (st, v) = b
            .call(
                "POST",
                "/api/auth/password-reset/confirm",
                Some(json!({"token": token, "password": "second password"})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = b
            .call(
                "POST",
                "/api/auth/password-reset/confirm",
                Some(json!({"token": token, "password": "third password"})),
            )
            .await;
        assert_eq!(st, 400, "a link works once: {v}");
        assert_eq!(v["error"]["code"], "invalid_link");
        // the old session is gone, the old password too
        let (st, _) = b.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 401);
        let (st, _) = b.login("joao", "first password").await;
        assert_eq!(st, 401);
        let (st, v) = b.login("joao", "second password").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["user"]["email_verified"], true,
            "the link proved the address"
        );
        // a notice went to the address
        let notice = one_mail(&sink, 3).await;
        let (subject, _) = Template::password_changed(Locale::PtBr, "gpt-api-proxy");
        assert_eq!(notice.subject().unwrap(), subject);

        // change password while signed in: this session continues, others end
        let mut other = Browser::new(&t);
        other.login("joao", "second password").await;
        let (st, _) = b
            .call(
                "POST",
                "/api/self/password",
                Some(json!({"current_password": "wrong one", "new_password": "fourth password"})),
            )
            .await;
        assert_eq!(st, 403);
        let (st, v) = b
            .call(
                "POST",
                "/api/self/password",
                Some(json!({"current_password": "second password", "new_password": "fourth password"})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let (st, _) = b.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 200);
        let (st, _) = other.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 401);
        t.finish().await;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn two_factor_sign_in_with_codes_and_recovery_codes() {
    for backend in backends() {
        let t = TestApp::spawn(backend).await;
        let mut b = Browser::new(&t);
        let (st, _) = b
            .call(
                "POST",
                "/api/auth/register",
                Some(json!({"username": "kenji", "password": "kenji password"})),
            )
            .await;
        assert_eq!(st, 201);
        let (_, v) = b.call("POST", "/api/self/totp/setup", None).await;
        let secret = accounts::totp::base32_decode(v["secret"].as_str().unwrap()).unwrap();
        assert!(
            v["otpauth_uri"]
                .as_str()
                .unwrap()
                .starts_with("otpauth://totp/")
        );
        let (st, _) = b
            .call(
                "POST",
                "/api/self/totp/enable",
                Some(json!({"code": "000000"})),
            )
            .await;
        assert_eq!(st, 400);
        let now = now_secs();
        let code = accounts::totp::code_at(&secret, now);
        let (st, v) = b
            .call("POST", "/api/self/totp/enable", Some(json!({"code": code})))
            .await;
        assert_eq!(st, 200, "{v}");
        let recovery: Vec<String> = v["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(recovery.len(), 10);
        b.call("POST", "/api/auth/logout", None).await;

        // the password alone opens only a pending session
        let mut c = Browser::new(&t);
        let (st, v) = c.login("kenji", "kenji password").await;
        assert_eq!(st, 200);
        assert_eq!(v["mfa_required"], true);
        assert!(v["token"].is_null());
        let (st, v) = c.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 401);
        assert_eq!(v["error"]["code"], "mfa_required");
        // the code already used to enable cannot be replayed
        let (st, _) = c
            .call("POST", "/api/auth/login/totp", Some(json!({"code": code})))
            .await;
        assert_eq!(st, 401);
        // and a wrong code ends the pending sign-in: the password is asked again
        let next = accounts::totp::code_at(&secret, now + 30);
        let (st, v) = c
            .call("POST", "/api/auth/login/totp", Some(json!({"code": next})))
            .await;
        assert_eq!(st, 401, "{v}");
        assert_eq!(v["error"]["code"], "session_expired");
        let (st, v) = c.login("kenji", "kenji password").await;
        assert_eq!(st, 200);
        assert_eq!(v["mfa_required"], true);
        // the next step's code (within the allowed skew) works, once
        let (st, v) = c
            .call("POST", "/api/auth/login/totp", Some(json!({"code": next})))
            .await;
        assert_eq!(st, 200, "{v}");
        assert!(v["token"].as_str().is_some());
        let (st, _) = c.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 200);

        // a recovery code signs in once
        let mut d = Browser::new(&t);
        d.login("kenji", "kenji password").await;
        let (st, _) = d
            .call(
                "POST",
                "/api/auth/login/totp",
                Some(json!({"recovery_code": recovery[3].to_uppercase()})),
            )
            .await;
        assert_eq!(st, 200);
        let mut e = Browser::new(&t);
        e.login("kenji", "kenji password").await;
        let (st, _) = e
            .call(
                "POST",
                "/api/auth/login/totp",
                Some(json!({"recovery_code": recovery[3]})),
            )
            .await;
        assert_eq!(st, 401, "a recovery code works once");
        // turning it off needs proof
        let (st, _) = c
            .call("POST", "/api/self/totp/disable", Some(json!({})))
            .await;
        assert_eq!(st, 403);
        let (st, _) = c
            .call(
                "POST",
                "/api/self/totp/disable",
                Some(json!({"password": "kenji password"})),
            )
            .await;
        assert_eq!(st, 200);
        let (_, v) = c.call("GET", "/api/auth/session", None).await;
        assert_eq!(v["user"]["totp_enabled"], false);
        t.finish().await;
    }
}

/// A change to the stand-in provider before one sign-in.
type IdpSetup = Box<dyn Fn(&MockIdp)>;

/// Google sign-in against the stand-in provider: the browser's round trip.
async fn google_round_trip(b: &mut Browser, idp: &MockIdp) -> reqwest::Response {
    let r = b.raw("GET", "/api/auth/google/start", None, false).await;
    assert_eq!(r.status(), 303, "start redirects to the provider");
    let to_idp = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to_idp.starts_with(&idp.authorize_url()));
    assert!(to_idp.contains("code_challenge_method=S256"));
    assert!(to_idp.contains("nonce="));
    let r = b.raw("GET", &to_idp, None, false).await;
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    b.raw("GET", &back, None, false).await
}

#[tokio::test]
async fn google_sign_in_verifies_the_id_token() {
    for backend in backends() {
        let idp = MockIdp::start().await.unwrap();
        let (issuer, auth, token, jwks) = (
            idp.issuer(),
            idp.authorize_url(),
            idp.token_url(),
            idp.jwks_url(),
        );
        let t = TestApp::spawn_with(backend, |c| {
            c.accounts.google.client_id = "gateway-client".into();
            c.accounts.google.client_secret = "gateway-secret".into();
            c.accounts.google.issuer = issuer;
            c.accounts.google.auth_url = auth;
            c.accounts.google.token_url = token;
            c.accounts.google.jwks_url = jwks;
        })
        .await;
        let redirect = t.url("/api/auth/google/callback");
        idp.register_client(
            "gateway-client",
            "gateway-secret",
            &[&redirect, "http://elsewhere.example/cb"],
        );
        let (_, info) = Browser::new(&t)
            .call("GET", "/api/auth/google/config", None)
            .await;
        assert_eq!(info["redirect_uri"], redirect.as_str());
        idp.set_user(TestUser::new("google-sub-123", "mei@example.com"));

        // first sign-in makes an account keyed on `sub`, with the verified address
        let mut b = Browser::new(&t);
        let r = google_round_trip(&mut b, &idp).await;
        assert_eq!(r.status(), 303, "{:?}", r.text().await);
        assert!(b.cookie.is_some());
        let (st, v) = b.call("GET", "/api/auth/session", None).await;
        assert_eq!(st, 200, "{v}");
        let uid = v["user"]["id"].as_i64().unwrap();
        assert_eq!(v["user"]["google_linked"], true);
        assert_eq!(v["user"]["email"], "mei@example.com");
        assert_eq!(v["user"]["email_verified"], true);
        assert_eq!(v["user"]["has_password"], false);
        let user = t.app.store.user(uid).await.unwrap();
        assert_eq!(user.google_id.as_deref(), Some("google-sub-123"));
        // the same Google account signs in to the same user
        let mut again = Browser::new(&t);
        google_round_trip(&mut again, &idp).await;
        let (_, v) = again.call("GET", "/api/auth/session", None).await;
        assert_eq!(v["user"]["id"].as_i64(), Some(uid));

        // refused tokens: forged signature, unknown key, expired, wrong audience
        let refusals: Vec<(&str, IdpSetup)> = vec![
            (
                "forged",
                Box::new(|i: &MockIdp| i.forge_tokens(Some((TestKey::Rogue, TestKey::Key1)))),
            ),
            (
                "unknown key",
                Box::new(|i: &MockIdp| i.forge_tokens(Some((TestKey::Rogue, TestKey::Rogue)))),
            ),
            (
                "expired",
                Box::new(|i: &MockIdp| {
                    i.forge_tokens(None);
                    i.set_claim_overrides(
                        json!({"exp": now_secs() - 3600, "iat": now_secs() - 7200}),
                    );
                }),
            ),
            (
                "wrong audience",
                Box::new(|i: &MockIdp| {
                    i.set_claim_overrides(json!({"aud": "someone-else", "azp": "someone-else"}));
                }),
            ),
        ];
        for (what, setup) in refusals {
            setup(&idp);
            let mut x = Browser::new(&t);
            let r = google_round_trip(&mut x, &idp).await;
            assert_eq!(r.status(), 401, "{what} token must be refused");
            assert!(x.cookie.is_none(), "{what}: no session");
            let page = r.text().await.unwrap();
            assert!(page.contains("refused"), "{what}: {page}");
        }
        idp.forge_tokens(None);
        idp.set_claim_overrides(json!({}));

        // a code redirected to another URI: the page names the URI to register
        let mut m = Browser::new(&t);
        let r = m.raw("GET", "/api/auth/google/start", None, false).await;
        let to_idp = r.headers()["location"].to_str().unwrap().to_string();
        let state = to_idp
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("state="))
            .unwrap()
            .to_string();
        let encoded_redirect: String = redirect
            .bytes()
            .map(|b| match b {
                b':' => "%3A".to_string(),
                b'/' => "%2F".to_string(),
                _ => (b as char).to_string(),
            })
            .collect();
        let wrong = to_idp.replace(&encoded_redirect, "http%3A%2F%2Felsewhere.example%2Fcb");
        assert_ne!(wrong, to_idp);
        let r = m.raw("GET", &wrong, None, false).await;
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with("http://elsewhere.example/cb"));
        let code = loc
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("code="))
            .unwrap()
            .to_string();
        let r = m
            .raw(
                "GET",
                &format!("/api/auth/google/callback?code={code}&state={state}"),
                None,
                false,
            )
            .await;
        assert_eq!(r.status(), 400);
        let page = r.text().await.unwrap();
        assert!(page.contains(&redirect), "{page}");
        assert!(page.contains("Authorized redirect URIs"), "{page}");

        // a replayed callback (state already used) is refused
        let r = m
            .raw(
                "GET",
                &format!("/api/auth/google/callback?code={code}&state={state}"),
                None,
                false,
            )
            .await;
        assert_eq!(r.status(), 400);

        // link and unlink on a password account
        let (pw_uid, _) = t.user_with_key("linker", "0").await;
        let mut l = Browser::new(&t);
        l.login("linker", "password123").await;
        idp.set_user(TestUser::new("google-sub-999", "linker@example.com"));
        let r = l
            .raw("GET", "/api/auth/google/start?purpose=link", None, false)
            .await;
        let to_idp = r.headers()["location"].to_str().unwrap().to_string();
        let r = l.raw("GET", &to_idp, None, false).await;
        let back = r.headers()["location"].to_str().unwrap().to_string();
        let r = l.raw("GET", &back, None, false).await;
        assert_eq!(r.status(), 303);
        let linked = t.app.store.user(pw_uid).await.unwrap();
        assert_eq!(linked.google_id.as_deref(), Some("google-sub-999"));
        let (st, _) = l.call("DELETE", "/api/self/google", None).await;
        assert_eq!(st, 200);
        assert!(t.app.store.user(pw_uid).await.unwrap().google_id.is_none());
        // a Google-only account cannot unlink its only way in
        let (st, v) = b.call("DELETE", "/api/self/google", None).await;
        assert_eq!(st, 409, "{v}");
        t.finish().await;
    }
}

#[tokio::test]
async fn users_manage_their_own_keys_and_access_tokens() {
    for backend in backends() {
        let t = TestApp::spawn(backend).await;
        t.add_mock_channel("m", &["gpt-4o-mini"], 0).await;
        let (_, _) = t.user_with_key("ana", "1").await;
        let (_, _) = t.user_with_key("bo", "1").await;
        let mut ana = Browser::new(&t);
        let (st, _) = ana.login("ana", "password123").await;
        assert_eq!(st, 200);
        let mut bo = Browser::new(&t);
        bo.login("bo", "password123").await;
        let (_, v) = ana
            .call("POST", "/api/self/keys", Some(json!({"name": "first"})))
            .await;
        let kid = v["data"]["id"].as_i64().unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(t.chat(&key, &body).await.status(), 200);

        // another user cannot see or change it
        let (st, _) = bo
            .call(
                "PATCH",
                &format!("/api/self/keys/{kid}"),
                Some(json!({"status": 0})),
            )
            .await;
        assert_eq!(st, 404);
        let (st, _) = bo
            .call("DELETE", &format!("/api/self/keys/{kid}"), None)
            .await;
        assert_eq!(st, 404);
        assert_eq!(t.chat(&key, &body).await.status(), 200);

        // rename, restrict, disable
        let (st, v) = ana
            .call(
                "PATCH",
                &format!("/api/self/keys/{kid}"),
                Some(json!({"name": "renamed", "allowed_models": ["gpt-4o"]})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["data"]["name"], "renamed");
        assert_eq!(t.chat(&key, &body).await.status(), 403);
        ana.call(
            "PATCH",
            &format!("/api/self/keys/{kid}"),
            Some(json!({"status": 0})),
        )
        .await;
        assert_eq!(t.chat(&key, &body).await.status(), 401);
        let (st, _) = ana
            .call("DELETE", &format!("/api/self/keys/{kid}"), None)
            .await;
        assert_eq!(st, 200);

        // access tokens for scripts: shown once, listed without the secret, revocable
        let (st, v) = ana
            .call("POST", "/api/self/tokens", Some(json!({"name": "ci"})))
            .await;
        assert_eq!(st, 200, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let (_, list) = ana.call("GET", "/api/self/tokens", None).await;
        let row = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "ci")
            .unwrap()
            .clone();
        assert!(!list.to_string().contains(&token));
        let me = t
            .http
            .get(t.url("/api/self"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
        let (st, _) = bo
            .call("DELETE", &format!("/api/self/tokens/{}", row["id"]), None)
            .await;
        assert_eq!(st, 404, "not bo's token");
        let (st, _) = ana
            .call("DELETE", &format!("/api/self/tokens/{}", row["id"]), None)
            .await;
        assert_eq!(st, 200);
        let me = t
            .http
            .get(t.url("/api/self"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 401);
        t.finish().await;
    }
}
