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
    let u = serde_json::Deserializer::from_slice(rest)
        .into_iter::<api_types::openai::Usage>()
        .next()?
        .ok()?;
    Some(usage_of(u))
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
