//! OpenAI's other endpoints (images, speech, transcriptions, moderations,
//! rerank): relayed as they are to OpenAI-compatible channels and billed per
//! call or per token. Nothing here converts bodies; it reads the few fields
//! that decide the bill.

use billing::{Price, Usage};
use serde_json::Value;

use crate::proxy::Endpoint;
use crate::tokens;

/// The value of the multipart form field `name` in `body`, found with a
/// plain scan of the part headers (`Content-Disposition: form-data;
/// name="…"`). `content_type` is the request's header, which carries the
/// boundary.
pub fn multipart_field(body: &[u8], content_type: &str, name: &str) -> Option<String> {
    let boundary = content_type.split(';').find_map(|p| {
        let p = p.trim();
        p.strip_prefix("boundary=")
            .map(|b| b.trim_matches('"').to_string())
    })?;
    if boundary.is_empty() {
        return None;
    }
    let delim = format!("--{boundary}");
    let wanted = format!("name=\"{name}\"");
    let mut rest = body;
    while let Some(i) = find(rest, delim.as_bytes()) {
        rest = &rest[i + delim.len()..];
        // the part's headers end at the first empty line
        let Some(h_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let headers = String::from_utf8_lossy(&rest[..h_end]);
        let content = &rest[h_end + 4..];
        let is_field = headers.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("content-disposition:")
                && l.split(';').any(|p| p.trim() == wanted)
        });
        if is_field {
            let end = find(content, format!("\r\n{delim}").as_bytes())?;
            return Some(String::from_utf8_lossy(&content[..end]).trim().to_string());
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a pass-through answer costs: token usage, the number of calls
/// billed at the per-call price, and whether the tokens were counted here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Bill {
    pub usage: Usage,
    pub calls: u64,
    pub estimated: bool,
}

fn u(v: &Value, path: &str) -> Option<u64> {
    v.pointer(path).and_then(Value::as_u64)
}

/// The bill of one answer. `n` is the number of images asked for;
/// `answer_json` is the answer parsed when it is JSON.
pub fn bill(endpoint: Endpoint, price: &Price, request: &[u8], n: u64, answer: &[u8]) -> Bill {
    let per_call = price.per_call.is_some();
    let answer_json: Option<Value> = serde_json::from_slice(answer).ok();
    let calls_only = |calls| Bill {
        calls,
        ..Bill::default()
    };
    let prompt = |prompt| Bill {
        usage: Usage {
            cache_write: 0,
            prompt,
            completion: 0,
            cached: 0,
        },
        ..Bill::default()
    };
    match endpoint {
        Endpoint::ImagesGenerations => calls_only(n.max(1)),
        Endpoint::AudioSpeech => {
            if per_call {
                return calls_only(1);
            }
            let chars = serde_json::from_slice::<Value>(request)
                .ok()
                .and_then(|v| {
                    v.get("input")
                        .and_then(Value::as_str)
                        .map(|s| s.chars().count())
                })
                .unwrap_or(0);
            prompt(chars as u64)
        }
        Endpoint::Moderations => {
            let usage = answer_json.as_ref().and_then(|v| v.get("usage"));
            match usage {
                Some(us) => {
                    let p = u(us, "/prompt_tokens")
                        .or_else(|| u(us, "/total_tokens"))
                        .unwrap_or(0);
                    let c = u(us, "/completion_tokens").unwrap_or(0);
                    Bill {
                        usage: Usage {
                            cache_write: 0,
                            prompt: p,
                            completion: c,
                            cached: 0,
                        },
                        ..Bill::default()
                    }
                }
                None => calls_only(1),
            }
        }
        Endpoint::Rerank => {
            if per_call {
                return calls_only(1);
            }
            let reported = answer_json.as_ref().and_then(|v| {
                u(v, "/usage/prompt_tokens")
                    .or_else(|| u(v, "/usage/total_tokens"))
                    .or_else(|| u(v, "/meta/billed_units/input_tokens"))
            });
            match reported {
                Some(t) => prompt(t),
                None => {
                    let mut b = prompt(tokens::count(&String::from_utf8_lossy(request)));
                    b.estimated = true;
                    b
                }
            }
        }
        Endpoint::AudioTranscriptions => {
            if per_call {
                return calls_only(1);
            }
            if let Some(us) = answer_json.as_ref().and_then(|v| v.get("usage")) {
                let p = u(us, "/input_tokens").or_else(|| u(us, "/prompt_tokens"));
                let c = u(us, "/output_tokens").or_else(|| u(us, "/completion_tokens"));
                if p.is_some() || c.is_some() {
                    return Bill {
                        usage: Usage {
                            cache_write: 0,
                            prompt: p.unwrap_or(0),
                            completion: c.unwrap_or(0),
                            cached: 0,
                        },
                        ..Bill::default()
                    };
                }
            }
            // text, srt or vtt answers: the whole body is the transcript
            let text = match &answer_json {
                Some(v) => v
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                None => String::from_utf8_lossy(answer).into_owned(),
            };
            Bill {
                usage: Usage {
                    cache_write: 0,
                    prompt: 0,
                    completion: tokens::count(&text),
                    cached: 0,
                },
                calls: 0,
                estimated: true,
            }
        }
        _ => Bill::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=----b0undary";

    fn form() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"------b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n");
        b.extend_from_slice(&[0, 1, 2, 255, b'\r', b'\n', b'-', b'-']);
        b.extend_from_slice(b"\r\n------b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n------b0undary\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n------b0undary--\r\n");
        b
    }

    #[test]
    fn reads_multipart_fields() {
        let b = form();
        assert_eq!(
            multipart_field(&b, CT, "model").as_deref(),
            Some("whisper-1")
        );
        assert_eq!(multipart_field(&b, CT, "language").as_deref(), Some("en"));
        assert_eq!(multipart_field(&b, CT, "prompt"), None);
        assert_eq!(multipart_field(&b, "multipart/form-data", "model"), None);
        let quoted = "multipart/form-data; boundary=\"----b0undary\"";
        assert_eq!(
            multipart_field(&b, quoted, "model").as_deref(),
            Some("whisper-1")
        );
    }

    #[test]
    fn bills_by_endpoint() {
        let per_call = Price::parse("0", "0", "")
            .and_then(|p| p.with_per_call("0.04"))
            .unwrap();
        let tokens = Price::parse("15", "1", "").unwrap();
        assert_eq!(
            bill(Endpoint::ImagesGenerations, &per_call, b"{}", 3, b"{}").calls,
            3
        );
        let b = bill(
            Endpoint::AudioSpeech,
            &tokens,
            br#"{"input":"h\u00e9llo"}"#,
            1,
            b"\xff\xfb",
        );
        assert_eq!(b.usage.prompt, 5);
        assert_eq!(b.calls, 0);
        let b = bill(
            Endpoint::Moderations,
            &tokens,
            b"{}",
            1,
            br#"{"usage":{"prompt_tokens":7,"total_tokens":7}}"#,
        );
        assert_eq!(b.usage.prompt, 7);
        assert_eq!(
            bill(Endpoint::Moderations, &tokens, b"{}", 1, b"{}").calls,
            1
        );
        let b = bill(
            Endpoint::Rerank,
            &tokens,
            b"{}",
            1,
            br#"{"usage":{"total_tokens":12}}"#,
        );
        assert_eq!(b.usage.prompt, 12);
        let b = bill(
            Endpoint::AudioTranscriptions,
            &tokens,
            b"",
            1,
            br#"{"text":"hello world","usage":{"type":"tokens","input_tokens":10,"output_tokens":3}}"#,
        );
        assert_eq!((b.usage.prompt, b.usage.completion), (10, 3));
        let b = bill(
            Endpoint::AudioTranscriptions,
            &tokens,
            b"",
            1,
            br#"{"text":"hello world"}"#,
        );
        assert!(b.estimated && b.usage.completion == 2);
    }
}
