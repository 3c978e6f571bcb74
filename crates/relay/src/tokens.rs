//! Token counting for upstreams that report no usage. The BPE tables ship
//! inside the binary (tiktoken-rs); they are built on first use only, so a
//! gateway whose upstreams report usage never pays for them.

/// Tokens of `text` under o200k_base (the GPT-4o family's encoding).
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// Counts tokens of text that arrives in pieces, holding at most a bounded
/// amount of it at a time.
#[derive(Default)]
pub struct StreamCounter {
    pending: Vec<u8>,
    counted: u64,
}

const FLUSH_AT: usize = 16 * 1024;

impl StreamCounter {
    pub fn push(&mut self, raw_json_string: &[u8]) {
        self.pending.extend_from_slice(raw_json_string);
        if self.pending.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let text = unescape_lossy(&self.pending);
        self.counted += count(&text);
        self.pending.clear();
    }

    pub fn finish(mut self) -> u64 {
        self.flush();
        self.counted
    }
}

/// Decodes JSON string escapes well enough for counting.
fn unescape_lossy(raw: &[u8]) -> String {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_real_tokens() {
        assert_eq!(count(""), 0);
        let n = count("Hello, world! This is a test.");
        assert!((6..=10).contains(&n), "{n}");
    }

    #[test]
    fn stream_counter_matches_a_whole_count_closely() {
        let piece = "hello there \\\"friend\\\" ";
        let mut c = StreamCounter::default();
        for _ in 0..5000 {
            c.push(piece.as_bytes());
        }
        let chunked = c.finish();
        let whole = count(&"hello there \"friend\" ".repeat(5000));
        // counting in 16 KiB pieces only splits a few tokens at the seams
        assert!(
            chunked.abs_diff(whole) * 100 <= whole,
            "{chunked} vs {whole}"
        );
        assert!(whole > 20_000);
    }
}
