//! Server-sent events, read incrementally with a bounded buffer.
//!
//! Events are cut at blank lines (`\n\n` or `\r\n\r\n`) and handed out as
//! zero-copy `Bytes` that include their terminator, so relaying one is
//! forwarding the upstream's own bytes.

use bytes::{Bytes, BytesMut};

pub struct SseSplitter {
    buf: BytesMut,
    max_event: usize,
    /// Where to resume searching for a terminator.
    scanned: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub struct EventTooLarge;

impl SseSplitter {
    pub fn new(max_event: usize) -> SseSplitter {
        SseSplitter {
            buf: BytesMut::new(),
            max_event,
            scanned: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        let from = self.scanned.saturating_sub(3);
        let hay = &self.buf[from..];
        let mut end = None;
        let mut i = 0;
        while let Some(p) = memchr::memchr(b'\n', &hay[i..]) {
            let at = i + p;
            if hay.get(at + 1) == Some(&b'\n') {
                end = Some(from + at + 2);
                break;
            }
            if hay.get(at + 1) == Some(&b'\r') && hay.get(at + 2) == Some(&b'\n') {
                end = Some(from + at + 3);
                break;
            }
            i = at + 1;
        }
        match end {
            Some(e) => {
                self.scanned = 0;
                Ok(Some(self.buf.split_to(e).freeze()))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_event {
                    Err(EventTooLarge)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Bytes held right now (for the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The payload of an event's `data:` lines joined by `\n` (the SSE rule),
/// borrowed when there is one data line.
pub fn event_data(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut lines = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|l| l.strip_prefix(b" ").unwrap_or(l));
    let Some(first) = lines.next() else {
        return std::borrow::Cow::Borrowed(&[]);
    };
    match lines.next() {
        None => std::borrow::Cow::Borrowed(first),
        Some(second) => {
            let mut v = first.to_vec();
            v.push(b'\n');
            v.extend_from_slice(second);
            for l in lines {
                v.push(b'\n');
                v.extend_from_slice(l);
            }
            std::borrow::Cow::Owned(v)
        }
    }
}

/// Appends the raw (still JSON-escaped) text of every `"key":"…"` string
/// in `json` to `out`. A byte scan, not a parse: it serves only to estimate
/// tokens when an upstream sends no usage.
pub fn collect_strings(json: &[u8], key: &[u8], out: &mut Vec<u8>) {
    collect_with(&memchr::memmem::Finder::new(key), json, out)
}

/// The keys whose string values hold produced text, with their finders
/// built once.
pub fn text_finders() -> &'static [memchr::memmem::Finder<'static>] {
    static F: std::sync::OnceLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::OnceLock::new();
    F.get_or_init(|| {
        [
            &b"\"content\""[..],
            b"\"text\"",
            b"\"arguments\"",
            b"\"partial_json\"",
            b"\"thinking\"",
            b"\"delta\"",
        ]
        .into_iter()
        .map(memchr::memmem::Finder::new)
        .collect()
    })
}

/// Like `collect_strings`, with a prepared finder.
pub fn collect_with(finder: &memchr::memmem::Finder<'_>, json: &[u8], out: &mut Vec<u8>) {
    let key_len = finder.needle().len();
    let mut pos = 0;
    while let Some(p) = finder.find(&json[pos..]) {
        let mut i = pos + p + key_len;
        while i < json.len() && matches!(json[i], b' ' | b':') {
            i += 1;
        }
        if json.get(i) != Some(&b'"') {
            pos = i;
            continue;
        }
        i += 1;
        let start = i;
        while i < json.len() {
            match json[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        let end = i.min(json.len());
        out.extend_from_slice(&json[start..end]);
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks_and_line_endings() {
        let mut s = SseSplitter::new(1024);
        s.push(b"data: {\"a\":1}\n");
        assert_eq!(s.next_event().unwrap(), None);
        s.push(b"\ndata: two\r\n\r\ndata: [DO");
        assert_eq!(
            s.next_event().unwrap().unwrap(),
            Bytes::from_static(b"data: {\"a\":1}\n\n")
        );
        assert_eq!(
            s.next_event().unwrap().unwrap(),
            Bytes::from_static(b"data: two\r\n\r\n")
        );
        assert_eq!(s.next_event().unwrap(), None);
        s.push(b"NE]\n\n");
        let e = s.next_event().unwrap().unwrap();
        assert_eq!(&*event_data(&e), b"[DONE]");
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn refuses_events_over_the_bound() {
        let mut s = SseSplitter::new(10);
        s.push(b"data: 0123456789abcdef");
        assert_eq!(s.next_event(), Err(EventTooLarge));
    }

    #[test]
    fn data_lines_join() {
        assert_eq!(&*event_data(b"event: x\ndata: a\ndata:b\n\n"), b"a\nb");
        assert_eq!(&*event_data(b": comment\n\n"), b"");
    }

    #[test]
    fn collects_content_strings() {
        let mut out = Vec::new();
        collect_strings(
            br#"{"delta":{"content":"Hel\"lo"},"x":{"content": "!"},"content":null}"#,
            b"\"content\"",
            &mut out,
        );
        assert_eq!(out, br#"Hel\"lo!"#);
    }
}
