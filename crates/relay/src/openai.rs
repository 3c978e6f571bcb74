//! What the gateway reads of OpenAI-format requests and answers: only the
//! fields it needs, borrowed. Everything else is forwarded as raw JSON.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

pub use api_types::openai::{RequestHead, UsageCarrier};

/// Parses the head, with an error that says where the JSON is broken.
pub fn parse_head(body: &[u8]) -> Result<RequestHead<'_>, String> {
    serde_json::from_slice::<RequestHead>(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!(
                "We could not parse the JSON body of your request: {} (line {}, column {}).",
                e,
                e.line(),
                e.column()
            )
        } else {
            format!("Invalid request body: {e}.")
        }
    })
}

/// Top-level fields of a JSON object, values left raw, order kept.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Fields<'a>, M::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    v.push((k, val));
                }
                Ok(Fields(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Rewrites a request body: sets `model` to `model` when given, and for a
/// stream asks the upstream for the usage chunk. Other fields are copied
/// byte for byte.
pub fn rewrite_body(
    body: &[u8],
    model: Option<&str>,
    force_include_usage: bool,
    drop_models: bool,
) -> Result<Vec<u8>, String> {
    let fields: Fields = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(body.len() + 48);
    out.push('{');
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
    };
    for (k, v) in &fields.0 {
        if (k == "model" && model.is_some())
            || (k == "stream_options" && force_include_usage)
            || ((k == "models" || k == "usage") && drop_models)
        {
            continue;
        }
        sep(&mut out);
        let _ = write!(out, "{}:{}", json_str(k), v.get());
    }
    if let Some(m) = model {
        sep(&mut out);
        let _ = write!(out, "\"model\":{}", json_str(m));
    }
    if force_include_usage {
        sep(&mut out);
        // keep whatever else the client put in stream_options
        let mut opts: serde_json::Map<String, serde_json::Value> = fields
            .0
            .iter()
            .find(|(k, _)| k == "stream_options")
            .and_then(|(_, v)| serde_json::from_str(v.get()).ok())
            .unwrap_or_default();
        opts.insert("include_usage".into(), serde_json::Value::Bool(true));
        let _ = write!(
            out,
            "\"stream_options\":{}",
            serde_json::Value::Object(opts)
        );
    }
    out.push('}');
    Ok(out.into_bytes())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The `usage` object of an OpenAI answer, read without parsing the whole
/// answer: the last `"usage":` key is the top-level one (it comes after the
/// choices, and a `"usage":` inside generated text would be escaped).
pub fn tail_usage(body: &[u8]) -> Option<billing::Usage> {
    let at = memchr::memmem::rfind(body, b"\"usage\"")?;
    let mut i = at + b"\"usage\"".len();
    while i < body.len() && matches!(body[i], b' ' | b':' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    if body.get(i) != Some(&b'{') {
        return None;
    }
    let rest = body.get(i..)?;
    let u = match scan_usage(rest) {
        Some(u) => u,
        None => serde_json::Deserializer::from_slice(rest)
            .into_iter::<api_types::openai::Usage>()
            .next()?
            .ok()?,
    };
    Some(usage_of(u))
}

/// Reads a `usage` object at the start of `s` without serde: the three
/// counts and `prompt_tokens_details.cached_tokens`, skipping every other
/// member. `None` for anything but the plain shape (a fraction, a negative
/// or escaped key, a repeated member, malformed text), and the caller then
/// asks the full parser, which decides.
fn scan_usage(s: &[u8]) -> Option<api_types::openai::Usage> {
    let mut c = Scan { s, i: 0 };
    let mut u = api_types::openai::Usage::default();
    let mut seen = [false; 4];
    c.members(|c, key| {
        let slot = match key {
            b"prompt_tokens" => 0,
            b"completion_tokens" => 1,
            b"total_tokens" => 2,
            b"prompt_tokens_details" => 3,
            _ => return c.skip_value(),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            0 => u.prompt_tokens = c.count()?,
            1 => u.completion_tokens = c.count()?,
            2 => u.total_tokens = c.count()?,
            _ => {
                if c.literal(b"null") {
                    return Some(());
                }
                let mut d = api_types::openai::PromptTokensDetails::default();
                let mut cached_seen = false;
                c.members(|c, key| {
                    if key != b"cached_tokens" {
                        return c.skip_value();
                    }
                    if std::mem::replace(&mut cached_seen, true) {
                        return None;
                    }
                    d.cached_tokens = c.count()?;
                    Some(())
                })?;
                u.prompt_tokens_details = Some(d);
            }
        }
        Some(())
    })?;
    Some(u)
}

/// A cursor over JSON text for [`scan_usage`].
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.s.get(self.i) == Some(&b)).then(|| self.i += 1)
    }

    fn literal(&mut self, lit: &[u8]) -> bool {
        self.ws();
        let hit = self.s[self.i..].starts_with(lit);
        if hit {
            self.i += lit.len();
        }
        hit
    }

    /// `{ "key": value, … }`, calling `each` with the cursor on each value.
    fn members(&mut self, mut each: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let start = self.i;
            let len = memchr::memchr2(b'"', b'\\', &self.s[start..])?;
            if self.s[start + len] != b'"' {
                return None;
            }
            self.i = start + len + 1;
            let key = &self.s[start..start + len];
            self.eat(b':')?;
            each(self, key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// An unsigned integer or `null`.
    fn count(&mut self) -> Option<Option<u64>> {
        if self.literal(b"null") {
            return Some(None);
        }
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.s.get(self.i) {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        // leading zeros, fractions and exponents go to the full parser
        let plain = digits > 0
            && !(digits > 1 && self.s[start] == b'0')
            && !matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E'));
        plain.then_some(Some(v))
    }

    /// Steps over one value of any kind, checking it is well-formed JSON
    /// (containers nested deeper than 32 and escaped keys are left to the
    /// full parser).
    fn skip_value(&mut self) -> Option<()> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: usize) -> Option<()> {
        if depth > 32 {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => self.members(|c, _| c.skip_nested(depth + 1)),
            b'[' => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip_nested(depth + 1)?;
                    if self.eat(b',').is_none() {
                        return self.eat(b']');
                    }
                }
            }
            b'"' => {
                self.i += 1;
                self.skip_string()
            }
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            _ => self.skip_number(),
        }
    }

    /// The rest of a string whose opening quote was read.
    fn skip_string(&mut self) -> Option<()> {
        loop {
            let rest = self.s.get(self.i..)?;
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..at].iter().any(|&b| b < 0x20) {
                return None;
            }
            self.i += at + 1;
            if rest[at] == b'"' {
                return Some(());
            }
            match *self.s.get(self.i)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                b'u' => {
                    let hex = self.s.get(self.i + 1..self.i + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 5;
                }
                _ => return None,
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn skip_number(&mut self) -> Option<()> {
        let s = self.s;
        let mut i = self.i;
        let digits = |i: &mut usize| {
            let start = *i;
            while matches!(s.get(*i), Some(b'0'..=b'9')) {
                *i += 1;
            }
            *i > start
        };
        if s.get(i) == Some(&b'-') {
            i += 1;
        }
        match s.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if s.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(s.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(s.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.i = i;
        Some(())
    }
}

/// Token counts from OpenAI's `usage`; a missing completion count is
/// derived from the total.
pub fn usage_of(u: api_types::openai::Usage) -> billing::Usage {
    let prompt = u.prompt_tokens.unwrap_or(0);
    let completion = u.completion_tokens.unwrap_or_else(|| {
        u.total_tokens
            .map(|t| t.saturating_sub(prompt))
            .unwrap_or(0)
    });
    billing::Usage {
        cache_write: 0,
        prompt,
        completion,
        cached: u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0),
    }
}

/// `generationConfig.maxOutputTokens` and `candidateCount` of a Gemini
/// request.
pub fn gemini_limits(body: &[u8]) -> (Option<u64>, u64) {
    #[derive(Deserialize)]
    struct Gc {
        #[serde(rename = "maxOutputTokens", default)]
        max: Option<u64>,
        #[serde(rename = "candidateCount", default)]
        n: Option<u64>,
    }
    #[derive(Deserialize)]
    struct G {
        #[serde(rename = "generationConfig", default)]
        gc: Option<Gc>,
    }
    match serde_json::from_slice::<G>(body).ok().and_then(|g| g.gc) {
        Some(gc) => (gc.max, gc.n.unwrap_or(1)),
        None => (None, 1),
    }
}

/// Text of a request's prompt for counting tokens: message contents (text
/// parts), legacy `prompt`, embeddings `input`.
pub fn prompt_text(body: &[u8]) -> (String, u64) {
    #[derive(Deserialize)]
    struct Msg {
        #[serde(default)]
        content: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        messages: Option<Vec<Msg>>,
        #[serde(default)]
        prompt: Option<serde_json::Value>,
        #[serde(default)]
        input: Option<serde_json::Value>,
        #[serde(default)]
        system: Option<serde_json::Value>,
        #[serde(rename = "systemInstruction", default)]
        system_instruction: Option<serde_json::Value>,
        #[serde(default)]
        contents: Option<Vec<serde_json::Value>>,
    }
    fn texts(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| texts(x, out)),
            serde_json::Value::Object(o) => {
                for k in ["text", "content", "parts"] {
                    if let Some(t) = o.get(k) {
                        texts(t, out);
                    }
                }
            }
            _ => {}
        }
    }
    let Ok(b) = serde_json::from_slice::<Body>(body) else {
        return (String::new(), 0);
    };
    let mut out = String::new();
    let mut messages = 0;
    if let Some(ms) = &b.messages {
        messages = ms.len() as u64;
        for m in ms {
            if let Some(c) = &m.content {
                texts(c, &mut out);
            }
        }
    }
    if let Some(cs) = &b.contents {
        messages += cs.len() as u64;
        cs.iter().for_each(|c| texts(c, &mut out));
    }
    for v in [&b.prompt, &b.input, &b.system, &b.system_instruction]
        .into_iter()
        .flatten()
    {
        texts(v, &mut out);
    }
    (out, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_reads_only_what_it_needs() {
        let h = parse_head(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"x":{"y":[1,2]}}"#).unwrap();
        assert_eq!(h.model.as_deref(), Some("gpt-4o"));
        assert_eq!(h.stream, Some(true));
        let e = parse_head(b"{\"model\": \"a\",\n \"messages\": [}")
            .err()
            .unwrap();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn rewrite_keeps_unknown_fields_and_injects_usage() {
        let body = br#"{"model":"a","stream":true,"stream_options":{"foo":1},"custom":{"deep":[1,"two"]}}"#;
        let out = rewrite_body(body, Some("b/c"), true, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "b/c");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["foo"], 1);
        assert_eq!(v["custom"]["deep"][1], "two");
        let out = rewrite_body(body, None, false, false).unwrap();
        let v2: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let v1: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v1, v2);
    }

    #[test]
    fn usage_from_the_tail() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\": {} trap"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let u = tail_usage(body).unwrap();
        assert_eq!((u.prompt, u.completion), (12, 3));
        assert!(tail_usage(br#"{"choices":[]}"#).is_none());
        // the hand scanner agrees with serde wherever it answers, and leaves
        // every other shape to it
        for text in [
            r#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}"#,
            r#"{ "prompt_tokens" : 12 , "completion_tokens":5 }"#,
            r#"{"total_tokens":30,"prompt_tokens":10}"#,
            r#"{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":1,"x":[1,{"y":"a\"}b"}],"z":null}}"#,
            r#"{"prompt_tokens":9,"prompt_tokens_details":null,"cost":0.0012,"is_byok":false}"#,
            r#"{"prompt_tokens":null,"completion_tokens":7}"#,
            r#"{}"#,
            r#"{"prompt_tokens":1.0,"completion_tokens":2}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":01}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens":1e3}"#,
            r#"{"prompt_tokens":99999999999999999999999}"#,
            r#"{"prompt_tokens":5}"#,
            r#"{"prompt_tokens":5,}"#,
            r#"{"prompt_tokens":"5"}"#,
            r#"{"prompt_tokens":5,"x":[1,{"y":"a"}b"}]}"#,
            r#"{"prompt_tokens":5,"x":{"a" 1}}"#,
            r#"{"prompt_tokens":5,"x":[1 2]}"#,
            r#"{"prompt_tokens":5,"x":01}"#,
            r#"{"prompt_tokens":5,"x":1.}"#,
            r#"{"prompt_tokens":5,"x":tru}"#,
            r#"{"prompt_tokens":5,"x":"bad \q escape"}"#,
            r#"{"prompt_tokens":5,"x":"\u00e9t\u00e9","y":-0.5e+3,"z":[[],{},[{}]]}"#,
        ] {
            let serde = serde_json::from_str::<api_types::openai::Usage>(text)
                .ok()
                .map(usage_of);
            let fast = scan_usage(text.as_bytes()).map(usage_of);
            if let Some(f) = fast {
                assert_eq!(Some(f), serde, "{text}");
            }
            let body = format!(r#"{{"id":"x","choices":[],"usage":{text}}}"#);
            assert_eq!(tail_usage(body.as_bytes()), serde, "{text}");
        }
        assert!(scan_usage(br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"completion_tokens_details":{"reasoning_tokens":0}}"#).is_some());
        assert!(scan_usage(br#"{"prompt_tokens":5"#).is_none());
        assert!(scan_usage(br#"{"prompt_tokens":5,"x":"open"#).is_none());
        assert!(tail_usage(br#"{"usage":null}"#).is_none());
    }

    #[test]
    fn usage_wire() {
        let c: UsageCarrier = serde_json::from_slice(br#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#).unwrap();
        assert_eq!(c.choices.map(|c| c.len()), Some(0));
        let u = usage_of(c.usage.unwrap());
        assert_eq!((u.prompt, u.completion, u.cached), (10, 5, 4));
        let e: UsageCarrier =
            serde_json::from_slice(br#"{"usage":{"prompt_tokens":7,"total_tokens":7}}"#).unwrap();
        assert_eq!(usage_of(e.usage.unwrap()).completion, 0);
    }

    #[test]
    fn prompt_text_collects_parts() {
        let (t, n) = prompt_text(br#"{"messages":[{"role":"system","content":"be nice"},{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#);
        assert_eq!(n, 2);
        assert!(t.contains("be nice") && t.contains("hello") && !t.contains("data:x"));
    }
}
