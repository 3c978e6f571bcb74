//! The OpenAPI 3.1 description of the management API, served at
//! `GET /api/openapi.json` without authentication. The document is written
//! by hand in `crates/web/openapi.json`; the tests below keep it in step
//! with the routes the code registers.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, embedded at build time.
pub(crate) const DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /api/openapi.json`.
pub(crate) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::DOCUMENT;

    /// The sources that register routes: the crate root and the modules whose
    /// routers it mounts. A mounted module missing here fails the
    /// completeness test (add it with its `include_str!`).
    const LIB: &str = include_str!("lib.rs");
    const MODULES: &[(&str, &str)] = &[
        ("api", include_str!("api.rs")),
        ("auth", include_str!("auth.rs")),
        ("google", include_str!("google.rs")),
        ("managed", include_str!("managed.rs")),
        ("payments", include_str!("payments.rs")),
        ("catalog", include_str!("catalog.rs")),
        ("stats", include_str!("stats.rs")),
        ("guard_layer", include_str!("guard_layer.rs")),
    ];

    /// Modules still being written whose routes the document does not cover
    /// yet: their routes are listed on stderr instead of failing the test.
    /// Take a module out of this list once its routes are documented.
    const NOT_YET_DOCUMENTED: &[&str] = &[];

    /// Routes of the crate root that belong to the relay or to health checks,
    /// which the document leaves out.
    const UNDOCUMENTED_PREFIXES: &[&str] = &["/v1", "/v1beta", "/healthz", "/readyz"];

    const HTTP_METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("crates/web/openapi.json is not valid JSON")
    }

    // ---- a small reader of Rust source text --------------------------------

    /// The index just past the string literal that starts at `start` (a `"`).
    fn skip_string(src: &[u8], start: usize) -> usize {
        let mut i = start + 1;
        while i < src.len() {
            match src[i] {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        src.len()
    }

    /// The index of the `)` that closes the `(` just before `start`, skipping
    /// string literals and line comments (so calls may span lines).
    fn closing_paren(src: &str, start: usize) -> usize {
        let b = src.as_bytes();
        let mut depth = 1usize;
        let mut i = start;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i = skip_string(b, i);
                    continue;
                }
                b'/' if b.get(i + 1) == Some(&b'/') => {
                    i = src[i..].find('\n').map_or(b.len(), |n| i + n);
                    continue;
                }
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced parentheses after byte {start}");
    }

    /// Every call `.NAME(ARGS)` in `src`: (byte offset of the dot, ARGS).
    fn method_calls<'a>(src: &'a str, name: &str) -> Vec<(usize, &'a str)> {
        let needle = format!(".{name}(");
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(n) = src[from..].find(&needle) {
            let at = from + n;
            let args_start = at + needle.len();
            let end = closing_paren(src, args_start);
            out.push((at, &src[args_start..end]));
            from = args_start;
        }
        out
    }

    /// The string literal that opens `args`, and the text after it.
    fn leading_literal(args: &str) -> Option<(&str, &str)> {
        let t = args.trim_start();
        if !t.starts_with('"') {
            return None;
        }
        let end = skip_string(t.as_bytes(), 0);
        Some((&t[1..end - 1], &t[end..]))
    }

    /// Identifiers that are called (`ident(`), outside string literals and
    /// line comments.
    fn called_idents(code: &str) -> Vec<String> {
        let b = code.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'"' {
                i = skip_string(b, i);
            } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
                i = code[i..].find('\n').map_or(b.len(), |n| i + n);
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let rest = code[i..].trim_start();
                if rest.starts_with('(') {
                    out.push(code[s..i].to_string());
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Calls of the form `module::function()` in `code`.
    fn router_calls(code: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(n) = code[from..].find("()") {
            let end = from + n;
            let head = &code[..end];
            let start = head
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |p| p + 1);
            // `crate::auth::pages()` and `auth::pages()` alike: the last two segments
            let segments: Vec<&str> = head[start..].split("::").collect();
            if let [.., m, f] = segments.as_slice()
                && !m.is_empty()
                && !f.is_empty()
            {
                out.push((m.to_string(), f.to_string()));
            }
            from = end + 2;
        }
        out
    }

    /// The name of the function whose body holds byte `at`.
    fn enclosing_fn(src: &str, at: usize) -> String {
        let head = &src[..at];
        let Some(p) = head.rfind("fn ") else {
            return String::new();
        };
        head[p + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    }

    /// The code before the first test module.
    fn code_of(src: &str) -> &str {
        src.split("#[cfg(test)]").next().unwrap_or(src)
    }

    /// `{*name}` (axum's catch-all) as an OpenAPI template `{name}`.
    fn openapi_path(axum_path: &str) -> String {
        axum_path.replace("{*", "{")
    }

    /// Where each module router is mounted, read from the crate root:
    /// `(module, function) → prefix`, from `.nest("/prefix", …)` and from the
    /// root's own `.merge(…)` calls.
    fn mounts(errors: &mut Vec<String>) -> BTreeMap<(String, String), String> {
        let lib = code_of(LIB);
        let mut out = BTreeMap::new();
        let mut nested = Vec::new();
        for (at, args) in method_calls(lib, "nest") {
            nested.push(at..at + args.len() + ".nest(".len());
            match leading_literal(args) {
                Some((prefix, rest)) => {
                    for call in router_calls(rest) {
                        out.insert(call, prefix.to_string());
                    }
                }
                None => errors.push(format!("lib.rs: a .nest( without a literal prefix: {args}")),
            }
        }
        for (at, args) in method_calls(lib, "merge") {
            if nested.iter().any(|r| r.contains(&at)) {
                continue;
            }
            for call in router_calls(args) {
                out.insert(call, String::new());
            }
        }
        out
    }

    /// Every (METHOD, path) the crate registers, with the full path, and the
    /// module that registers it (`lib` for the crate root).
    fn code_operations(errors: &mut Vec<String>) -> BTreeMap<(String, String), &'static str> {
        let mounts = mounts(errors);
        let mut sources = vec![("lib", LIB)];
        sources.extend(MODULES.iter().copied());
        let mut ops = BTreeMap::new();
        for (module, src) in sources {
            let code = code_of(src);
            let combines = method_calls(code, "nest")
                .into_iter()
                .chain(method_calls(code, "merge"))
                .any(|(_, args)| !router_calls(args).is_empty());
            if module != "lib" && combines {
                errors.push(format!(
                    "{module}.rs nests or merges another router; teach the scanner in openapi.rs about it"
                ));
            }
            for (at, args) in method_calls(code, "route") {
                let func = enclosing_fn(code, at);
                let prefix = if module == "lib" {
                    String::new()
                } else if let Some(p) = mounts.get(&(module.to_string(), func.clone())) {
                    p.clone()
                } else {
                    errors.push(format!(
                        "{module}.rs: routes of `fn {func}` are not mounted in lib.rs (or the scanner cannot see where)"
                    ));
                    continue;
                };
                let Some((path, rest)) = leading_literal(args) else {
                    errors.push(format!(
                        "{module}.rs: a .route( without a literal path: {args}"
                    ));
                    continue;
                };
                let full = format!("{prefix}{path}");
                if module == "lib" && UNDOCUMENTED_PREFIXES.iter().any(|p| full.starts_with(p)) {
                    continue;
                }
                let methods: Vec<String> = called_idents(rest)
                    .into_iter()
                    .filter(|f| HTTP_METHODS.contains(&f.as_str()) || f == "any" || f == "on")
                    .collect();
                if methods.is_empty() {
                    errors.push(format!("{module}.rs: no method router found for {full}"));
                }
                for m in methods {
                    if m == "any" || m == "on" {
                        errors.push(format!(
                            "{module}.rs: {full} uses `{m}(…)`; list its methods explicitly"
                        ));
                        continue;
                    }
                    ops.insert((m.to_uppercase(), openapi_path(&full)), module);
                }
            }
        }
        // a mounted router may still be empty, but its file must be read
        for ((module, func), prefix) in &mounts {
            if !MODULES.iter().any(|(m, _)| m == module) {
                errors.push(format!(
                    "lib.rs mounts {module}::{func}() at `{prefix}`, but openapi.rs does not scan {module}.rs; add it to MODULES"
                ));
            }
        }
        ops
    }

    fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                for method in HTTP_METHODS {
                    if item.get(*method).is_some() {
                        ops.insert((method.to_uppercase(), path.clone()));
                    }
                }
            }
        }
        ops
    }

    fn listing(ops: &[&(String, String)]) -> String {
        ops.iter()
            .map(|(m, p)| format!("  {m} {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ---- tests ----------------------------------------------------------------

    #[test]
    fn document_is_openapi_3_1_json() {
        let d = doc();
        let version = d["openapi"].as_str().unwrap_or_default();
        assert!(
            version.starts_with("3.1."),
            "openapi is `{version}`, not 3.1.x"
        );
        assert_eq!(d["info"]["title"], "gpt-api-proxy management API");
        assert_eq!(d["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(d["servers"][0]["url"], "/");
        let schemes = &d["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
        assert_eq!(schemes["session"]["name"], crate::auth::SESSION_COOKIE);
        let error = &d["components"]["schemas"]["Error"]["properties"]["error"];
        for field in ["message", "code", "request_id"] {
            assert!(
                error["properties"].get(field).is_some(),
                "the Error schema lacks {field}"
            );
        }
    }

    #[test]
    fn scanner_reads_multi_line_routes() {
        let src = "fn router() -> Router {\n    Router::new()\n        .route(\n            \"/a/{id}\",\n            get(a_get) // comment (\n                .patch(a_patch),\n        )\n        .route(\"/b/{*m}\", axum::routing::put(b).delete(c))\n}\n";
        let found: Vec<(String, Vec<String>)> = method_calls(src, "route")
            .into_iter()
            .map(|(at, args)| {
                assert_eq!(enclosing_fn(src, at), "router");
                let (path, rest) = leading_literal(args).expect("a literal path");
                (openapi_path(path), called_idents(rest))
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("/a/{id}".to_string(), vec!["get".into(), "patch".into()]),
                ("/b/{m}".to_string(), vec!["put".into(), "delete".into()]),
            ]
        );
    }

    #[test]
    fn document_and_routes_list_the_same_operations() {
        let mut errors = Vec::new();
        let all = code_operations(&mut errors);
        assert!(
            errors.is_empty(),
            "reading the routes failed:\n{}",
            errors.join("\n")
        );
        assert!(
            all.contains_key(&("GET".to_string(), "/api/openapi.json".to_string())),
            "the document's own route was not found"
        );
        let (pending, code): (Vec<_>, Vec<_>) = all
            .iter()
            .partition(|(_, module)| NOT_YET_DOCUMENTED.contains(module));
        let code: BTreeSet<(String, String)> = code.into_iter().map(|(op, _)| op.clone()).collect();
        if !pending.is_empty() {
            eprintln!(
                "not yet in openapi.json (modules {NOT_YET_DOCUMENTED:?}):\n{}",
                listing(&pending.iter().map(|(op, _)| *op).collect::<Vec<_>>())
            );
        }
        let documented = documented_operations(&doc());
        // the relay routes are not in `code`, so documenting them fails too
        let undocumented: Vec<_> = code.difference(&documented).collect();
        let not_in_code: Vec<_> = documented
            .iter()
            .filter(|op| !code.contains(*op))
            .filter(|op| {
                // a documented route of a pending module is fine
                !pending.iter().any(|(p, _)| p == op)
            })
            .collect();
        assert!(
            undocumented.is_empty() && not_in_code.is_empty(),
            "crates/web/openapi.json is out of step with the routes.\n\
             Registered in code but missing from the document:\n{}\n\
             Documented but not registered in code (or a relay route):\n{}",
            listing(&undocumented),
            listing(&not_in_code),
        );
        assert!(
            documented
                .iter()
                .all(|(_, p)| p.starts_with("/api/") || p.starts_with("/auth/")),
            "the document describes only /api and /auth paths"
        );
    }

    #[test]
    fn every_operation_names_its_roles() {
        let allowed = ["root", "admin", "user", "user_root", "anyone"];
        let d = doc();
        let mut bad = Vec::new();
        for (path, item) in d["paths"].as_object().into_iter().flatten() {
            for method in HTTP_METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let roles: Vec<&str> = op["x-roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let described = op["description"]
                    .as_str()
                    .is_some_and(|t| t.contains("Roles:"));
                if roles.is_empty() || roles.iter().any(|r| !allowed.contains(r)) || !described {
                    bad.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "operations without a valid x-roles list or a `Roles:` line:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn every_ref_resolves_and_every_component_is_used() {
        fn walk<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("$ref", Value::String(r)) => out.push((at.clone(), r.as_str())),
                            _ => walk(
                                x,
                                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                                out,
                            ),
                        }
                    }
                }
                Value::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        walk(x, format!("{at}/{i}"), out);
                    }
                }
                _ => {}
            }
        }
        let d = doc();
        let mut refs = Vec::new();
        walk(&d, String::new(), &mut refs);
        assert!(!refs.is_empty());
        let broken: Vec<String> = refs
            .iter()
            .filter(|(_, r)| !r.starts_with("#/") || d.pointer(&r[1..]).is_none())
            .map(|(at, r)| format!("  {at}: {r}"))
            .collect();
        assert!(
            broken.is_empty(),
            "$refs that do not resolve:\n{}",
            broken.join("\n")
        );
        let used: BTreeSet<&str> = refs.iter().map(|(_, r)| *r).collect();
        let mut unused = Vec::new();
        for kind in ["schemas", "responses", "parameters"] {
            for name in d["components"][kind].as_object().into_iter().flatten() {
                let r = format!("#/components/{kind}/{}", name.0);
                if !used.contains(r.as_str()) {
                    unused.push(r);
                }
            }
        }
        assert!(
            unused.is_empty(),
            "components nothing refers to:\n{}",
            unused.join("\n")
        );
    }

    #[tokio::test]
    async fn served_as_json_without_credentials() {
        use axum::response::IntoResponse;
        // the handler takes no extractors, so nothing can ask for credentials
        let r = super::document().await.into_response();
        assert_eq!(r.status(), axum::http::StatusCode::OK);
        assert_eq!(
            r.headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .expect("read the body");
        assert_eq!(body, DOCUMENT.as_bytes());
        // and the crate root routes it at GET /api/openapi.json
        let lib = code_of(LIB);
        let routed = method_calls(lib, "route").into_iter().any(|(_, args)| {
            leading_literal(args).is_some_and(|(path, rest)| {
                path == "/api/openapi.json"
                    && rest.contains("openapi::document")
                    && called_idents(rest) == ["get"]
            })
        });
        assert!(
            routed,
            "lib.rs does not route GET /api/openapi.json to openapi::document"
        );
    }
}
