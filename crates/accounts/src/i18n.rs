//! Localized texts for e-mail messages (and, later, the web dashboard).
//!
//! The texts live in `locales/<tag>.ftl`, embedded into the binary and parsed once. The files
//! use a small subset of [Fluent](https://projectfluent.org/) syntax:
//!
//! ```text
//! # A comment (any line starting with `#` in the first column).
//! greeting = Hello, { $name }!
//! long-text =
//!     A value spread over several indented lines.
//!
//!     Blank lines in between are kept; the common indentation is removed.
//! braces = A literal brace: { "{" }
//! ```
//!
//! Placeables are either a variable (`{ $name }`) or a string literal (`{ "text" }`);
//! Fluent's selectors, terms and attributes are not supported. Plurals are handled by the
//! caller with separate keys (`…-one` / `…-other`, see [`Locale::plural_one`]).
//!
//! [`t`] looks a key up in the requested locale and falls back to English when the locale
//! lacks it; the tests make sure every locale has every English key with the same
//! placeholders.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

/// A language the texts are translated into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Locale {
    /// English, the fallback for everything.
    #[default]
    En,
    /// Simplified Chinese.
    ZhCn,
    /// Japanese.
    Ja,
    /// Brazilian Portuguese.
    PtBr,
    /// Hindi.
    Hi,
}

impl Locale {
    /// Every supported locale, English first.
    pub const ALL: [Locale; 5] = [
        Locale::En,
        Locale::ZhCn,
        Locale::Ja,
        Locale::PtBr,
        Locale::Hi,
    ];

    /// The BCP 47 tag: `en`, `zh-CN`, `ja`, `pt-BR`, `hi`.
    pub fn tag(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::ZhCn => "zh-CN",
            Locale::Ja => "ja",
            Locale::PtBr => "pt-BR",
            Locale::Hi => "hi",
        }
    }

    /// The language's name in the language itself, for a language picker.
    pub fn native_name(self) -> &'static str {
        match self {
            Locale::En => "English",
            Locale::ZhCn => "简体中文",
            Locale::Ja => "日本語",
            Locale::PtBr => "Português (Brasil)",
            Locale::Hi => "हिन्दी",
        }
    }

    /// The locale for a language tag, ignoring case and region: `zh`, `zh-Hans`, `zh-TW` and
    /// `zh_CN` give [`Locale::ZhCn`] (the only Chinese translation), `pt` and `pt-PT` give
    /// [`Locale::PtBr`], `en-GB` gives [`Locale::En`]. `None` for languages without a
    /// translation (and for `*`).
    pub fn from_tag(tag: &str) -> Option<Locale> {
        let primary = tag.trim().split(['-', '_']).next().unwrap_or_default();
        match primary.to_ascii_lowercase().as_str() {
            "en" => Some(Locale::En),
            "zh" => Some(Locale::ZhCn),
            "ja" => Some(Locale::Ja),
            "pt" => Some(Locale::PtBr),
            "hi" => Some(Locale::Hi),
            _ => None,
        }
    }

    /// The best locale for an HTTP `Accept-Language` header: entries are tried from the
    /// highest q-value down (ties keep their order), entries with `q=0` or an invalid q-value
    /// are skipped, and `*` or no usable entry gives English.
    ///
    /// `"fr-CH, fr;q=0.9, ja;q=0.8, en;q=0.5"` gives [`Locale::Ja`].
    pub fn negotiate(accept_language: &str) -> Locale {
        let mut ranges: Vec<(f32, Option<Locale>)> = Vec::new();
        for entry in accept_language.split(',') {
            let mut parts = entry.split(';');
            let range = parts.next().unwrap_or_default().trim();
            if range.is_empty() {
                continue;
            }
            let mut q = Some(1.0f32);
            for param in parts {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    q = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q));
                }
            }
            let Some(q) = q.filter(|q| *q > 0.0) else {
                continue;
            };
            let locale = if range == "*" {
                Some(Locale::En)
            } else {
                Locale::from_tag(range)
            };
            ranges.push((q, locale));
        }
        // A stable sort: entries with equal q keep the order the client sent them in.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges
            .into_iter()
            .find_map(|(_, locale)| locale)
            .unwrap_or(Locale::En)
    }

    /// The default locale for users in a country (ISO 3166-1 alpha-2 code, any case), or
    /// `None` when the country has no specific default (use English).
    ///
    /// China, Taiwan, Hong Kong, Macao and Singapore get Simplified Chinese (the only Chinese
    /// translation); Japan gets Japanese; Brazil, Portugal and the other Portuguese-speaking
    /// countries get Brazilian Portuguese. India gets Hindi: that is a product decision (users
    /// in India get Hindi by default), although English is widely used there too; a user's
    /// own choice or `Accept-Language` should win over this guess.
    pub fn from_country(iso2: &str) -> Option<Locale> {
        match iso2.trim().to_ascii_uppercase().as_str() {
            "CN" | "TW" | "HK" | "MO" | "SG" => Some(Locale::ZhCn),
            "JP" => Some(Locale::Ja),
            "BR" | "PT" | "AO" | "MZ" | "CV" | "GW" | "ST" | "TL" => Some(Locale::PtBr),
            "IN" => Some(Locale::Hi),
            _ => None,
        }
    }

    /// Whether `n` takes the singular ("one") form in this language, following the CLDR
    /// plural rules for integers: English `1`; Portuguese and Hindi `0` and `1`; Japanese and
    /// Chinese have no singular form.
    pub fn plural_one(self, n: u64) -> bool {
        match self {
            Locale::En => n == 1,
            Locale::PtBr | Locale::Hi => n <= 1,
            Locale::Ja | Locale::ZhCn => false,
        }
    }

    fn index(self) -> usize {
        match self {
            Locale::En => 0,
            Locale::ZhCn => 1,
            Locale::Ja => 2,
            Locale::PtBr => 3,
            Locale::Hi => 4,
        }
    }

    fn source(self) -> &'static str {
        match self {
            Locale::En => include_str!("../locales/en.ftl"),
            Locale::ZhCn => include_str!("../locales/zh-CN.ftl"),
            Locale::Ja => include_str!("../locales/ja.ftl"),
            Locale::PtBr => include_str!("../locales/pt-BR.ftl"),
            Locale::Hi => include_str!("../locales/hi.ftl"),
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// The error of parsing an unsupported language tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported language `{0}` (supported: en, zh-CN, ja, pt-BR, hi)")]
pub struct UnknownLocale(pub String);

impl FromStr for Locale {
    type Err = UnknownLocale;

    fn from_str(s: &str) -> Result<Locale, UnknownLocale> {
        Locale::from_tag(s).ok_or_else(|| UnknownLocale(s.to_string()))
    }
}

impl serde::Serialize for Locale {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.tag())
    }
}

impl<'de> serde::Deserialize<'de> for Locale {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Locale, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The text of `key` in `locale` with `{ $name }` placeholders replaced by the values in
/// `args`. Falls back to English when the locale lacks the key, and to the key itself when
/// English lacks it too. A placeholder without a value in `args` is left as `{ $name }`.
///
/// ```
/// use accounts::i18n::{t, Locale};
/// let s = t(Locale::Ja, "email-test-subject", &[("site", "Example")]);
/// assert!(s.contains("Example"));
/// ```
pub fn t(locale: Locale, key: &str, args: &[(&str, &str)]) -> String {
    let catalogs = &*CATALOGS;
    let pattern = catalogs[locale.index()]
        .messages
        .get(key)
        .or_else(|| catalogs[Locale::En.index()].messages.get(key));
    match pattern {
        Some(p) => p.format(args),
        None => key.to_string(),
    }
}

/// Whether `locale` itself (without the English fallback) has a text for `key`.
pub fn has(locale: Locale, key: &str) -> bool {
    CATALOGS[locale.index()].messages.contains_key(key)
}

static CATALOGS: LazyLock<Vec<Catalog>> =
    LazyLock::new(|| Locale::ALL.iter().map(|l| parse(l.source())).collect());

/// The parsed messages of one locale file.
#[derive(Debug, Default)]
struct Catalog {
    messages: HashMap<String, Pattern>,
    /// Problems found while parsing, with line numbers. Entries with problems are skipped;
    /// a test makes sure the shipped files have none.
    errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Segment>);

impl Pattern {
    fn format(&self, args: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Text(s) => out.push_str(s),
                Segment::Var(name) => match args.iter().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("{ $");
                        out.push_str(name);
                        out.push_str(" }");
                    }
                },
            }
        }
        out
    }

    /// The variable names used, sorted and without duplicates.
    #[cfg(test)]
    fn variables(&self) -> Vec<&str> {
        let mut vars: Vec<&str> = self
            .0
            .iter()
            .filter_map(|s| match s {
                Segment::Var(v) => Some(v.as_str()),
                Segment::Text(_) => None,
            })
            .collect();
        vars.sort_unstable();
        vars.dedup();
        vars
    }
}

/// A message being collected: its key, the line it starts on, the text after `=`, and the
/// indented continuation lines (blank lines as empty strings).
struct Pending<'a> {
    key: &'a str,
    line: usize,
    first: &'a str,
    rest: Vec<&'a str>,
}

fn parse(src: &str) -> Catalog {
    let mut catalog = Catalog::default();
    let mut pending: Option<Pending<'_>> = None;
    for (i, line) in src.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            if let Some(p) = pending.as_mut() {
                p.rest.push("");
            }
            continue;
        }
        if line.starts_with(' ') {
            match pending.as_mut() {
                Some(p) => p.rest.push(line),
                None => catalog.errors.push(format!(
                    "line {line_no}: indented line does not belong to any message"
                )),
            }
            continue;
        }
        if let Some(p) = pending.take() {
            finish(&mut catalog, p);
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with('\t') {
            catalog.errors.push(format!(
                "line {line_no}: indent continuation lines with spaces, not tabs"
            ));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            catalog
                .errors
                .push(format!("line {line_no}: expected `key = value`"));
            continue;
        };
        let key = key.trim();
        if !valid_key(key) {
            catalog.errors.push(format!(
                "line {line_no}: `{key}` is not a valid key (a letter, then letters, digits, `-` or `_`)"
            ));
            continue;
        }
        pending = Some(Pending {
            key,
            line: line_no,
            first: value.trim(),
            rest: Vec::new(),
        });
    }
    if let Some(p) = pending.take() {
        finish(&mut catalog, p);
    }
    catalog
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn finish(catalog: &mut Catalog, mut p: Pending<'_>) {
    while p.rest.last().is_some_and(|l| l.is_empty()) {
        p.rest.pop();
    }
    let indent = p
        .rest
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    let mut lines: Vec<&str> = Vec::with_capacity(p.rest.len() + 1);
    if !p.first.is_empty() {
        lines.push(p.first);
    }
    for l in &p.rest {
        lines.push(if l.trim().is_empty() {
            ""
        } else {
            l[indent..].trim_end()
        });
    }
    let text = lines.join("\n");
    if text.is_empty() {
        catalog
            .errors
            .push(format!("line {}: `{}` has no value", p.line, p.key));
        return;
    }
    match parse_pattern(&text) {
        Ok(pattern) => {
            if catalog
                .messages
                .insert(p.key.to_string(), pattern)
                .is_some()
            {
                catalog
                    .errors
                    .push(format!("line {}: `{}` is defined twice", p.line, p.key));
            }
        }
        Err(e) => catalog
            .errors
            .push(format!("line {}: `{}`: {e}", p.line, p.key)),
    }
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find(['{', '}']) {
        literal.push_str(&rest[..pos]);
        if rest[pos..].starts_with('}') {
            return Err("`}` without a matching `{` (write { \"}\" } for a literal brace)".into());
        }
        let after = &rest[pos + 1..];
        let (inner, tail) = split_placeable(after)?;
        let inner = inner.trim();
        if let Some(name) = inner.strip_prefix('$') {
            if !valid_key(name) {
                return Err(format!("`${name}` is not a valid variable name"));
            }
            if !literal.is_empty() {
                segments.push(Segment::Text(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Var(name.to_string()));
        } else if let Some(quoted) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            literal.push_str(&unescape(quoted)?);
        } else {
            return Err(format!(
                "unsupported placeable `{{ {inner} }}` (use {{ $name }} or {{ \"text\" }})"
            ));
        }
        rest = tail;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Text(literal));
    }
    Ok(Pattern(segments))
}

/// Splits `… } tail` (the text after a `{`) at the closing brace, skipping braces inside a
/// string literal.
fn split_placeable(s: &str) -> Result<(&str, &str), String> {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_string = true,
                '}' => return Ok((&s[..i], &s[i + 1..])),
                '{' | '\n' => break,
                _ => {}
            }
        }
    }
    Err("`{` without a matching `}` on the same line".into())
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let ch = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape `\\u{hex}`"))?;
                out.push(ch);
            }
            other => {
                return Err(format!(
                    "unknown escape `\\{}` in a string literal",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_parse_cleanly() {
        for locale in Locale::ALL {
            let catalog = &CATALOGS[locale.index()];
            assert!(
                catalog.errors.is_empty(),
                "locales/{}.ftl has errors: {:#?}",
                locale.tag(),
                catalog.errors
            );
            assert!(!catalog.messages.is_empty(), "{} is empty", locale.tag());
        }
    }

    #[test]
    fn every_key_is_in_every_locale() {
        let en = &CATALOGS[Locale::En.index()].messages;
        let mut missing = Vec::new();
        let mut extra = Vec::new();
        for locale in Locale::ALL {
            let messages = &CATALOGS[locale.index()].messages;
            let mut keys: Vec<&String> = en.keys().collect();
            keys.sort();
            for key in keys {
                if !messages.contains_key(key) {
                    missing.push(format!(
                        "`{key}` is missing from locales/{}.ftl",
                        locale.tag()
                    ));
                }
            }
            for key in messages.keys() {
                if !en.contains_key(key) {
                    extra.push(format!(
                        "`{key}` in locales/{}.ftl is not in en.ftl",
                        locale.tag()
                    ));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
        assert!(extra.is_empty(), "{extra:#?}");
    }

    #[test]
    fn placeholders_match_english() {
        let en = &CATALOGS[Locale::En.index()].messages;
        let mut problems = Vec::new();
        for locale in Locale::ALL {
            for (key, pattern) in &CATALOGS[locale.index()].messages {
                let Some(english) = en.get(key) else { continue };
                if pattern.variables() != english.variables() {
                    problems.push(format!(
                        "`{key}` in {} uses {:?}, English uses {:?}",
                        locale.tag(),
                        pattern.variables(),
                        english.variables()
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn translations_are_not_english_copies() {
        let en = &CATALOGS[Locale::En.index()].messages;
        for locale in Locale::ALL.into_iter().skip(1) {
            for (key, pattern) in &CATALOGS[locale.index()].messages {
                if key.starts_with("email-") {
                    assert_ne!(
                        Some(pattern),
                        en.get(key),
                        "`{key}` in {} is the English text",
                        locale.tag()
                    );
                }
            }
        }
    }

    #[test]
    fn parses_multi_line_values_comments_and_literals() {
        let src = "# comment\n\
                   single = One { $x } two\n\
                   \n\
                   block =\n    First line\n\n      indented { $y }\n    last\n\n\n\
                   ## group comment\n\
                   inline = Start\n    continued\n\
                   lit = a { \"{\" } b { \"\\\"q\\\"\" } c { \"\\u00e9\" }\n\
                   crlf = x\r\n    y\r\n";
        let c = parse(src);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let get = |k: &str, args: &[(&str, &str)]| c.messages[k].format(args);
        assert_eq!(get("single", &[("x", "1")]), "One 1 two");
        assert_eq!(
            get("block", &[("y", "Y")]),
            "First line\n\n  indented Y\nlast"
        );
        assert_eq!(get("inline", &[]), "Start\ncontinued");
        assert_eq!(get("lit", &[]), "a { b \"q\" c é");
        assert_eq!(get("crlf", &[]), "x\ny");
        // A missing argument stays visible.
        assert_eq!(get("single", &[]), "One { $x } two");
    }

    #[test]
    fn reports_parse_errors_with_line_numbers() {
        let c = parse(
            "  orphan\nok = fine\nbad line\n1key = x\nempty =\nopen = { $x\nclose = }\nvar = { x }\nok = again\n\tkey = tab\n",
        );
        let joined = c.errors.join("\n");
        for needle in [
            "line 1: indented line does not belong to any message",
            "line 3: expected `key = value`",
            "line 4: `1key` is not a valid key",
            "line 5: `empty` has no value",
            "line 6: `open`",
            "line 7: `close`",
            "line 8: `var`: unsupported placeable",
            "line 9: `ok` is defined twice",
            "line 10: indent continuation lines with spaces",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        // The later definition wins.
        assert_eq!(c.messages["ok"].format(&[]), "again");
    }

    #[test]
    fn lookup_falls_back_to_english_then_key() {
        let s = t(Locale::Hi, "email-test-subject", &[("site", "Acme")]);
        assert!(s.contains("Acme"));
        assert_ne!(s, t(Locale::En, "email-test-subject", &[("site", "Acme")]));
        assert_eq!(t(Locale::Ja, "no-such-key", &[]), "no-such-key");
        assert!(has(Locale::Ja, "email-verify-body"));
        assert!(!has(Locale::Ja, "no-such-key"));
    }

    #[test]
    fn tags_round_trip() {
        for l in Locale::ALL {
            assert_eq!(Locale::from_tag(l.tag()), Some(l));
            assert_eq!(l.tag().parse::<Locale>(), Ok(l));
            assert_eq!(l.to_string(), l.tag());
        }
        for (tag, want) in [
            ("EN-us", Locale::En),
            ("zh", Locale::ZhCn),
            ("zh-Hans", Locale::ZhCn),
            ("zh-Hant-TW", Locale::ZhCn),
            ("zh_TW", Locale::ZhCn),
            ("ZH-cn", Locale::ZhCn),
            ("ja-JP", Locale::Ja),
            ("pt", Locale::PtBr),
            ("pt-PT", Locale::PtBr),
            ("hi-IN", Locale::Hi),
        ] {
            assert_eq!(Locale::from_tag(tag), Some(want), "{tag}");
        }
        assert_eq!(Locale::from_tag("fr"), None);
        assert_eq!(Locale::from_tag("*"), None);
        assert_eq!(Locale::from_tag(""), None);
        assert!("de".parse::<Locale>().is_err());
        let json = serde_json::to_string(&Locale::PtBr).unwrap();
        assert_eq!(json, "\"pt-BR\"");
        assert_eq!(
            serde_json::from_str::<Locale>("\"zh-hans\"").unwrap(),
            Locale::ZhCn
        );
        assert!(serde_json::from_str::<Locale>("\"xx\"").is_err());
    }

    #[test]
    fn negotiates_accept_language() {
        for (header, want) in [
            ("", Locale::En),
            ("*", Locale::En),
            ("ja", Locale::Ja),
            ("en-US,en;q=0.9,zh-CN;q=0.8", Locale::En),
            ("zh-CN,zh;q=0.9,en;q=0.8", Locale::ZhCn),
            ("fr-CH, fr;q=0.9, ja;q=0.8, en;q=0.5", Locale::Ja),
            ("en;q=0.5, pt-BR", Locale::PtBr),
            ("en;q=0.3,hi;q=0.7", Locale::Hi),
            ("ja;q=0, en;q=0.1", Locale::En),
            ("ja;q=0", Locale::En),
            ("de, fr", Locale::En),
            ("de, *;q=0.5", Locale::En),
            ("ja;q=abc, pt;q=0.2", Locale::PtBr),
            ("ja;q=2, pt;q=0.2", Locale::PtBr),
            (" zh-TW ; Q=0.8 , ja ; q=0.8 ", Locale::ZhCn),
            ("ja;level=1;q=0.9, en;q=0.8", Locale::Ja),
            (",,;q=1,", Locale::En),
        ] {
            assert_eq!(Locale::negotiate(header), want, "{header:?}");
        }
    }

    #[test]
    fn countries() {
        assert_eq!(Locale::from_country("CN"), Some(Locale::ZhCn));
        assert_eq!(Locale::from_country("tw"), Some(Locale::ZhCn));
        assert_eq!(Locale::from_country("HK"), Some(Locale::ZhCn));
        assert_eq!(Locale::from_country("SG"), Some(Locale::ZhCn));
        assert_eq!(Locale::from_country("JP"), Some(Locale::Ja));
        assert_eq!(Locale::from_country("BR"), Some(Locale::PtBr));
        assert_eq!(Locale::from_country("pt"), Some(Locale::PtBr));
        assert_eq!(Locale::from_country("IN"), Some(Locale::Hi));
        assert_eq!(Locale::from_country("US"), None);
        assert_eq!(Locale::from_country("DE"), None);
        assert_eq!(Locale::from_country(""), None);
    }

    #[test]
    fn plural_rules() {
        assert!(Locale::En.plural_one(1));
        assert!(!Locale::En.plural_one(0));
        assert!(!Locale::En.plural_one(24));
        assert!(Locale::PtBr.plural_one(0) && Locale::PtBr.plural_one(1));
        assert!(!Locale::PtBr.plural_one(2));
        assert!(Locale::Hi.plural_one(1) && !Locale::Hi.plural_one(5));
        assert!(!Locale::Ja.plural_one(1) && !Locale::ZhCn.plural_one(1));
    }
}
