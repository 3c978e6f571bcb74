//! Rendering plans into OpenAI's exact JSON and SSE byte layout.

use bytes::Bytes;

use crate::plan::{Kind, Plan, Reply, TOOL_ARGS, TextSource};
use crate::wire::{push_default_text, push_json_str, push_u64};

pub(crate) const TOOL_CALL_ID: &str = "call_mock1";

fn push_chat_usage(b: &mut String, p: &Plan) {
    b.push_str(r#"{"prompt_tokens":"#);
    push_u64(b, p.prompt_tokens);
    b.push_str(r#","completion_tokens":"#);
    push_u64(b, p.completion_tokens);
    b.push_str(r#","total_tokens":"#);
    push_u64(b, p.prompt_tokens + p.completion_tokens);
    b.push_str(r#","prompt_tokens_details":{"cached_tokens":"#);
    push_u64(b, p.cached_tokens);
    b.push_str(
        r#","audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
    );
}

fn push_simple_usage(b: &mut String, p: &Plan) {
    b.push_str(r#"{"prompt_tokens":"#);
    push_u64(b, p.prompt_tokens);
    b.push_str(r#","completion_tokens":"#);
    push_u64(b, p.completion_tokens);
    b.push_str(r#","total_tokens":"#);
    push_u64(b, p.prompt_tokens + p.completion_tokens);
    b.push('}');
}

fn push_usage(b: &mut String, p: &Plan) {
    match p.kind {
        Kind::Chat => push_chat_usage(b, p),
        Kind::Completion => push_simple_usage(b, p),
    }
}

pub(crate) fn push_full_text(b: &mut String, src: &TextSource) {
    match src {
        TextSource::Default(len) => {
            // The default sentence needs no escaping.
            b.push('"');
            push_default_text(b, 0, *len);
            b.push('"');
        }
        TextSource::Custom(s) => push_json_str(b, s),
    }
}

fn text_len_hint(p: &Plan) -> usize {
    match &p.reply {
        Reply::Text(TextSource::Default(len)) => *len,
        Reply::Text(TextSource::Custom(s)) => s.len() + s.len() / 8,
        Reply::Tool { .. } => 160,
    }
}

/// Non-streaming body for a chat or legacy completion.
pub(crate) fn completion_body(p: &Plan, id: u64, created: u64) -> String {
    match p.kind {
        Kind::Chat => chat_body(p, id, created),
        Kind::Completion => legacy_body(p, id, created),
    }
}

fn chat_body(p: &Plan, id: u64, created: u64) -> String {
    let mut msg = String::with_capacity(64 + text_len_hint(p));
    match &p.reply {
        Reply::Text(src) => {
            msg.push_str(r#"{"role":"assistant","content":"#);
            push_full_text(&mut msg, src);
            msg.push_str(r#","refusal":null}"#);
        }
        Reply::Tool { name } => {
            msg.push_str(r#"{"role":"assistant","content":null,"tool_calls":[{"id":""#);
            msg.push_str(TOOL_CALL_ID);
            msg.push_str(r#"","type":"function","function":{"name":"#);
            push_json_str(&mut msg, name);
            msg.push_str(r#","arguments":"#);
            push_json_str(&mut msg, TOOL_ARGS);
            msg.push_str(r#"}}],"refusal":null}"#);
        }
    }
    let mut b = String::with_capacity(600 + (msg.len() + 64) * p.choices);
    b.push_str(r#"{"id":"chatcmpl-mock"#);
    push_u64(&mut b, id);
    b.push_str(r#"","object":"chat.completion","created":"#);
    push_u64(&mut b, created);
    b.push_str(r#","model":"#);
    push_json_str(&mut b, &p.model);
    b.push_str(r#","choices":["#);
    for i in 0..p.choices {
        if i > 0 {
            b.push(',');
        }
        b.push_str(r#"{"index":"#);
        push_u64(&mut b, i as u64);
        b.push_str(r#","message":"#);
        b.push_str(&msg);
        b.push_str(r#","logprobs":null,"finish_reason":""#);
        b.push_str(p.finish_reason);
        b.push_str(r#""}"#);
    }
    b.push(']');
    if !p.controls.omit_usage {
        b.push_str(r#","usage":"#);
        push_chat_usage(&mut b, p);
    }
    b.push_str(r#","system_fingerprint":"fp_mock"}"#);
    b
}

fn legacy_body(p: &Plan, id: u64, created: u64) -> String {
    let mut text = String::with_capacity(2 + text_len_hint(p));
    if let Reply::Text(src) = &p.reply {
        push_full_text(&mut text, src);
    } else {
        text.push_str(r#""""#);
    }
    let mut b = String::with_capacity(300 + (text.len() + 64) * p.choices);
    b.push_str(r#"{"id":"cmpl-mock"#);
    push_u64(&mut b, id);
    b.push_str(r#"","object":"text_completion","created":"#);
    push_u64(&mut b, created);
    b.push_str(r#","model":"#);
    push_json_str(&mut b, &p.model);
    b.push_str(r#","choices":["#);
    for i in 0..p.choices {
        if i > 0 {
            b.push(',');
        }
        b.push_str(r#"{"text":"#);
        b.push_str(&text);
        b.push_str(r#","index":"#);
        push_u64(&mut b, i as u64);
        b.push_str(r#","logprobs":null,"finish_reason":""#);
        b.push_str(p.finish_reason);
        b.push_str(r#""}"#);
    }
    b.push(']');
    if !p.controls.omit_usage {
        b.push_str(r#","usage":"#);
        push_simple_usage(&mut b, p);
    }
    b.push('}');
    b
}

/// Produces the pieces of content (or tool-call argument fragments) one at a time, so
/// arbitrarily long streams never exist in memory as a whole.
pub(crate) enum Pieces {
    Default {
        len: usize,
        pos: usize,
        size: usize,
    },
    Owned {
        text: String,
        pos: usize,
        size: usize,
    },
}

impl Pieces {
    /// Pieces of `size` characters of the reply text, or of the tool-call arguments JSON;
    /// also returns the tool name for a tool call.
    pub fn for_reply(reply: Reply, size: usize) -> (Pieces, Option<String>) {
        let size = size.max(1);
        match reply {
            Reply::Text(TextSource::Default(len)) => (Pieces::Default { len, pos: 0, size }, None),
            Reply::Text(TextSource::Custom(text)) => (Pieces::Owned { text, pos: 0, size }, None),
            Reply::Tool { name } => (
                Pieces::Owned {
                    text: TOOL_ARGS.to_owned(),
                    pos: 0,
                    size,
                },
                Some(name),
            ),
        }
    }

    /// Append the next piece as a JSON string literal; false when exhausted.
    pub fn next_into(&mut self, out: &mut String) -> bool {
        match self {
            Pieces::Default { len, pos, size } => {
                if *pos >= *len {
                    return false;
                }
                let take = (*size).min(*len - *pos);
                out.push('"');
                push_default_text(out, *pos, take);
                out.push('"');
                *pos += take;
                true
            }
            Pieces::Owned { text, pos, size } => {
                let rest = &text[*pos..];
                if rest.is_empty() {
                    return false;
                }
                let end = rest
                    .char_indices()
                    .nth(*size)
                    .map_or(rest.len(), |(i, _)| i);
                push_json_str(out, &rest[..end]);
                *pos += end;
                true
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The opening (role) chunk for choice `i` (chat only).
    Role(usize),
    /// The current piece for choice `i`; at `i == choices` the next piece is fetched.
    Piece(usize),
    Finish(usize),
    Usage,
    Done,
    End,
}

/// What the stream yields next.
pub(crate) enum Step {
    Event(Bytes),
    /// Close the connection abruptly (`mock.drop_after`).
    Drop,
    End,
}

/// A lazy source of stream events (SSE events, or JSON array pieces for Gemini).
pub(crate) trait Events: Send + 'static {
    fn next_step(&mut self) -> Step;
}

impl Events for StreamGen {
    fn next_step(&mut self) -> Step {
        StreamGen::next_step(self)
    }
}

/// Lazily generates the SSE events of a streamed completion.
pub(crate) struct StreamGen {
    kind: Kind,
    /// `data: {"id":...,"choices":[`
    prefix: String,
    /// What closes the `choices` array and the object, e.g. `]}\n\n` or
    /// `],"model":"x","usage":null}\n\n`.
    suffix: String,
    /// The whole usage event, if one is to be sent.
    usage_event: Option<Bytes>,
    tool_name: Option<String>,
    choices: usize,
    finish_reason: &'static str,
    pieces: Pieces,
    piece: String,
    pieces_sent: usize,
    drop_after: Option<usize>,
    phase: Phase,
}

impl StreamGen {
    pub fn new(p: Plan, id: u64, created: u64) -> Self {
        let mut prefix = String::with_capacity(160 + p.model.len());
        // Closes the choices array, before the optional usage field.
        let mut close = String::with_capacity(32 + p.model.len());
        match p.kind {
            Kind::Chat => {
                prefix.push_str(r#"data: {"id":"chatcmpl-mock"#);
                push_u64(&mut prefix, id);
                prefix.push_str(r#"","object":"chat.completion.chunk","created":"#);
                push_u64(&mut prefix, created);
                prefix.push_str(r#","model":"#);
                push_json_str(&mut prefix, &p.model);
                prefix.push_str(r#","system_fingerprint":"fp_mock","choices":["#);
                close.push(']');
            }
            Kind::Completion => {
                prefix.push_str(r#"data: {"id":"cmpl-mock"#);
                push_u64(&mut prefix, id);
                prefix.push_str(r#"","object":"text_completion","created":"#);
                push_u64(&mut prefix, created);
                prefix.push_str(r#","choices":["#);
                close.push_str(r#"],"model":"#);
                push_json_str(&mut close, &p.model);
            }
        }
        let mut suffix = close.clone();
        if p.include_usage {
            suffix.push_str(r#","usage":null"#);
        }
        suffix.push_str("}\n\n");

        let usage_event = (p.include_usage && !p.controls.omit_usage).then(|| {
            let mut e = String::with_capacity(prefix.len() + close.len() + 300);
            e.push_str(&prefix);
            e.push_str(&close);
            e.push_str(r#","usage":"#);
            push_usage(&mut e, &p);
            e.push_str("}\n\n");
            Bytes::from(e)
        });

        let (pieces, tool_name) = Pieces::for_reply(p.reply, p.controls.chunk_size);

        StreamGen {
            kind: p.kind,
            prefix,
            suffix,
            usage_event,
            tool_name,
            choices: p.choices,
            finish_reason: p.finish_reason,
            pieces,
            piece: String::new(),
            pieces_sent: 0,
            drop_after: p.controls.drop_after,
            phase: match p.kind {
                Kind::Chat => Phase::Role(0),
                Kind::Completion => Phase::Piece(p.choices),
            },
        }
    }

    fn event(&self, choice: &str) -> Bytes {
        let mut e = String::with_capacity(self.prefix.len() + choice.len() + self.suffix.len());
        e.push_str(&self.prefix);
        e.push_str(choice);
        e.push_str(&self.suffix);
        Bytes::from(e)
    }

    fn role_choice(&self, i: usize) -> String {
        let mut c = String::with_capacity(200);
        c.push_str(r#"{"index":"#);
        push_u64(&mut c, i as u64);
        match &self.tool_name {
            None => c.push_str(r#","delta":{"role":"assistant","content":"","refusal":null}"#),
            Some(name) => {
                c.push_str(r#","delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":""#);
                c.push_str(TOOL_CALL_ID);
                c.push_str(r#"","type":"function","function":{"name":"#);
                push_json_str(&mut c, name);
                c.push_str(r#","arguments":""}}],"refusal":null}"#);
            }
        }
        c.push_str(r#","logprobs":null,"finish_reason":null}"#);
        c
    }

    fn piece_choice(&self, i: usize) -> String {
        let mut c = String::with_capacity(self.piece.len() + 120);
        match self.kind {
            Kind::Chat => {
                c.push_str(r#"{"index":"#);
                push_u64(&mut c, i as u64);
                if self.tool_name.is_some() {
                    c.push_str(r#","delta":{"tool_calls":[{"index":0,"function":{"arguments":"#);
                    c.push_str(&self.piece);
                    c.push_str("}}]}");
                } else {
                    c.push_str(r#","delta":{"content":"#);
                    c.push_str(&self.piece);
                    c.push('}');
                }
                c.push_str(r#","logprobs":null,"finish_reason":null}"#);
            }
            Kind::Completion => {
                c.push_str(r#"{"text":"#);
                c.push_str(&self.piece);
                c.push_str(r#","index":"#);
                push_u64(&mut c, i as u64);
                c.push_str(r#","logprobs":null,"finish_reason":null}"#);
            }
        }
        c
    }

    fn finish_choice(&self, i: usize) -> String {
        let mut c = String::with_capacity(96);
        match self.kind {
            Kind::Chat => {
                c.push_str(r#"{"index":"#);
                push_u64(&mut c, i as u64);
                c.push_str(r#","delta":{},"logprobs":null,"finish_reason":""#);
            }
            Kind::Completion => {
                c.push_str(r#"{"text":"","index":"#);
                push_u64(&mut c, i as u64);
                c.push_str(r#","logprobs":null,"finish_reason":""#);
            }
        }
        c.push_str(self.finish_reason);
        c.push_str(r#""}"#);
        c
    }

    pub fn next_step(&mut self) -> Step {
        loop {
            match self.phase {
                Phase::Role(i) if i < self.choices => {
                    self.phase = Phase::Role(i + 1);
                    return Step::Event(self.event(&self.role_choice(i)));
                }
                Phase::Role(_) => self.phase = Phase::Piece(self.choices),
                Phase::Piece(i) if i < self.choices => {
                    self.phase = Phase::Piece(i + 1);
                    return Step::Event(self.event(&self.piece_choice(i)));
                }
                Phase::Piece(_) => {
                    if self.drop_after.is_some_and(|d| self.pieces_sent >= d) {
                        self.phase = Phase::End;
                        return Step::Drop;
                    }
                    self.piece.clear();
                    if self.pieces.next_into(&mut self.piece) {
                        self.pieces_sent += 1;
                        self.phase = Phase::Piece(0);
                    } else if self.drop_after.is_some() {
                        self.phase = Phase::End;
                        return Step::Drop;
                    } else {
                        self.phase = Phase::Finish(0);
                    }
                }
                Phase::Finish(i) if i < self.choices => {
                    self.phase = Phase::Finish(i + 1);
                    return Step::Event(self.event(&self.finish_choice(i)));
                }
                Phase::Finish(_) => self.phase = Phase::Usage,
                Phase::Usage => {
                    self.phase = Phase::Done;
                    if let Some(e) = self.usage_event.take() {
                        return Step::Event(e);
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Step::Event(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Phase::End => return Step::End,
            }
        }
    }
}
