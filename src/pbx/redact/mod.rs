//! Redaction of text that came from (or through) a PBX before it can be
//! logged, stored (`last_error`, onboarding flow errors, audit events) or
//! returned. A PBX that echoes the request in an error body
//! (`{"error_description": "bad client_secret=..."}`) must not put the
//! secret into our errors.
//!
//! Two passes, both here so they cannot drift apart:
//! - *known* secrets (the client secret, authorization code and bearer
//!   token a request carried, a new app's secret) are found in any mix of
//!   raw, URL-encoded (`%XX` in either case, `+` for space) and JSON-escaped
//!   (`\"`, `\/`, `\uXXXX`) spellings;
//! - anything that *looks* like a secret: the value after a secret-ish key
//!   (`client_secret=`, `"access_token": "..."`, `code:`), the credential
//!   after `Bearer`/`Basic`, and long high-entropy runs.
//!
//! Provider text is cut to a few hundred characters (`parse::sanitize`),
//! and a cut can leave the start of a secret before the `…` mark: a run
//! ending at the mark that starts a known secret is redacted too.
//!
//! Over-redaction is the accepted failure mode: an error that says
//! `[redacted]` where a harmless word was is still a useful error; a leaked
//! secret is not.

/// What replaces every redacted span.
pub const REDACTED: &str = "[redacted]";

/// The mark `parse::sanitize` appends after cutting provider text.
pub const CUT_MARK: char = '…';

/// Known secrets shorter than this are not searched for: they would match
/// ordinary words (and carry too little to be worth hiding).
pub const MIN_KNOWN_CHARS: usize = 4;

/// Runs at least this long are judged by [`looks_secret`].
const MIN_RUN: usize = 20;

/// Keys whose values are secrets, compared without case.
const SECRET_KEYS: &[&str] = &[
    "client_secret",
    "secret",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "code",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "client_assertion",
    "assertion",
];

/// Both passes over `text`; `known` are the secrets of the call that
/// produced it (empty: patterns only).
pub fn redact(text: &str, known: &[&str]) -> String {
    let mut spans = Vec::new();
    for secret in known {
        known_spans(text, secret, &mut spans);
    }
    key_value_spans(text, &mut spans);
    credential_spans(text, &mut spans);
    run_spans(text, &mut spans);
    replace_spans(text, spans)
}

/// The known-secrets pass alone. The client runs it over an error answer
/// *before* the parser judges the text: the parser's look-alike pass can
/// redact the part of a secret that looks random and leave the rest
/// (`[redacted]"Rt5m"&ab= Yp3H`), which the known pass could then no
/// longer recognise as that secret.
pub fn redact_known(text: &str, known: &[&str]) -> String {
    let mut spans = Vec::new();
    for secret in known {
        known_spans(text, secret, &mut spans);
    }
    replace_spans(text, spans)
}

/// [`redact_known`] over an answer body: in every string (and key) of a
/// JSON body, after JSON decoding, so escaped spellings inside the
/// provider's text are seen as the text says them; over the whole text of
/// any other UTF-8 body. Other bytes are left as they are (the parsers
/// never quote a body that is neither).
pub fn redact_known_body(body: &[u8], known: &[&str]) -> Vec<u8> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let v = redact_json(v, known);
        if let Ok(out) = serde_json::to_vec(&v) {
            return out;
        }
    }
    match std::str::from_utf8(body) {
        Ok(text) => redact_known(text, known).into_bytes(),
        Err(_) => body.to_vec(),
    }
}

fn redact_json(v: serde_json::Value, known: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(redact_known(&s, known)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|x| redact_json(x, known)).collect())
        }
        Value::Object(obj) => Value::Object(
            obj.into_iter()
                .map(|(k, x)| (redact_known(&k, known), redact_json(x, known)))
                .collect(),
        ),
        other => other,
    }
}

/// Replaces the (possibly overlapping) byte ranges, merged, by [`REDACTED`].
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    if spans.is_empty() {
        return text.to_owned();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut iter = spans.into_iter().peekable();
    while let Some((start, mut end)) = iter.next() {
        while let Some(&(s, e)) = iter.peek() {
            if s > end {
                break;
            }
            end = end.max(e);
            iter.next();
        }
        if start < at {
            // Inside an already replaced span (cannot happen after merging).
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

// ---- known secrets -------------------------------------------------------

/// How a match attempt ended.
#[derive(Clone, Copy)]
enum Matched {
    /// The whole secret, ending at this byte offset.
    Full(usize),
    /// The text ended (at a cut mark) after this many secret characters.
    Cut(usize),
    None,
}

fn known_spans(text: &str, secret: &str, spans: &mut Vec<(usize, usize)>) {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < MIN_KNOWN_CHARS {
        return;
    }
    // A secret may itself contain the cut mark (any visible character is
    // allowed in a client secret): its whole spellings are looked for
    // across the marks too. (Found by the `redaction` fuzz target.)
    if secret.contains(CUT_MARK) {
        let mut memo = Memo::new();
        for (p, _) in text.char_indices() {
            if let Matched::Full(end) = match_secret(text.as_bytes(), p, &chars, 0, &mut memo) {
                spans.push((p, end));
            }
        }
    }
    // Segments end at the cut marks: a match may run up to one and stop.
    let mut seg_start = 0;
    for (seg_end, is_cut) in text
        .match_indices(CUT_MARK)
        .map(|(i, _)| (i, true))
        .chain(std::iter::once((text.len(), false)))
    {
        let seg = &text.as_bytes()[..seg_end];
        // One memo per segment: a result depends only on where in the text
        // and in the secret it starts, so every start position shares it.
        let mut memo = Memo::new();
        for (p, _) in text[seg_start..seg_end].char_indices() {
            let p = seg_start + p;
            match match_secret(seg, p, &chars, 0, &mut memo) {
                Matched::Full(end) => spans.push((p, end)),
                Matched::Cut(n) if is_cut && n >= MIN_KNOWN_CHARS => spans.push((p, seg_end)),
                _ => {}
            }
        }
        seg_start = seg_end + if is_cut { CUT_MARK.len_utf8() } else { 0 };
    }
}

/// Results of [`match_secret`] by (text offset, secret index). Without it,
/// text where a character has several spellings at once (a run of
/// backslashes: JSON escapes of escapes) made the search exponential: a
/// PBX answer of a few dozen backslashes could hold a renewal worker for
/// minutes (found by the `redaction` fuzz target as slow units).
type Memo = std::collections::HashMap<(usize, usize), Matched>;

/// Matches `secret[si..]` at `text[ti..]`, each character raw or encoded.
fn match_secret(text: &[u8], ti: usize, secret: &[char], si: usize, memo: &mut Memo) -> Matched {
    let Some(&c) = secret.get(si) else {
        return Matched::Full(ti);
    };
    if ti == text.len() {
        return Matched::Cut(si);
    }
    if let Some(&known) = memo.get(&(ti, si)) {
        return known;
    }
    let mut result = Matched::None;
    for len in encodings(text, ti, c) {
        match match_secret(text, ti + len, secret, si + 1, memo) {
            Matched::None => continue,
            found => {
                result = found;
                break;
            }
        }
    }
    memo.insert((ti, si), result);
    result
}

/// Byte lengths of every spelling of `c` that starts at `text[ti..]`: raw,
/// `%XX` per UTF-8 byte, `+` for a space, or a JSON escape. Usually one.
fn encodings(text: &[u8], ti: usize, c: char) -> Vec<usize> {
    let rest = &text[ti..];
    let mut utf8 = [0u8; 4];
    let raw = c.encode_utf8(&mut utf8).as_bytes();
    let mut found = Vec::new();
    if rest.starts_with(raw) {
        found.push(raw.len());
    }
    if let Some(n) = percent_encoded(rest, raw) {
        found.push(n);
    }
    if c == ' ' && rest.first() == Some(&b'+') {
        found.push(1);
    }
    if let Some(n) = json_escaped(rest, c) {
        found.push(n);
    }
    found
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_encoded(rest: &[u8], raw: &[u8]) -> Option<usize> {
    for (i, want) in raw.iter().enumerate() {
        match rest.get(i * 3..i * 3 + 3)? {
            [b'%', h, l] if hex(*h)? << 4 | hex(*l)? == *want => {}
            _ => return None,
        }
    }
    Some(raw.len() * 3)
}

fn json_escaped(rest: &[u8], c: char) -> Option<usize> {
    if rest.first() != Some(&b'\\') {
        return None;
    }
    let short = match c {
        '"' => Some(b'"'),
        '\\' => Some(b'\\'),
        '/' => Some(b'/'),
        '\u{8}' => Some(b'b'),
        '\u{c}' => Some(b'f'),
        '\n' => Some(b'n'),
        '\r' => Some(b'r'),
        '\t' => Some(b't'),
        _ => None,
    };
    if short.is_some() && rest.get(1).copied() == short {
        return Some(2);
    }
    let mut units = [0u16; 2];
    let mut at = 0;
    for unit in c.encode_utf16(&mut units).iter() {
        match rest.get(at..at + 6)? {
            [b'\\', b'u', a, b, c2, d] => {
                let v = [*a, *b, *c2, *d]
                    .iter()
                    .try_fold(0u16, |v, h| Some(v << 4 | u16::from(hex(*h)?)))?;
                if v != *unit {
                    return None;
                }
            }
            _ => return None,
        }
        at += 6;
    }
    Some(at)
}

// ---- patterns ------------------------------------------------------------

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Characters of an unquoted value: stops at separators and quotes.
fn is_value(b: u8) -> bool {
    !(b.is_ascii_whitespace() || b"&,;\"'<>(){}[]\\".contains(&b))
}

/// Characters of a credential or a random run (base64, base64url, hex,
/// percent-encoded). `=` only as base64 padding, at the end, so that
/// `client_id=a80f1e618ddd` is two runs, not one.
fn is_run(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_+/~%".contains(&b)
}

/// The end of the run starting at `i`, with its `=` padding.
fn run_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_run(b[i]) {
        i += 1;
    }
    while i < b.len() && b[i] == b'=' {
        i += 1;
    }
    i
}

/// `key` `=`/`:` `value`, the key quoted or not, the value quoted, escaped
/// quoted or bare; the value's span is redacted.
fn key_value_spans(text: &str, spans: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    for key in SECRET_KEYS {
        for (k, _) in lower.match_indices(key) {
            let end = k + key.len();
            if (k > 0 && is_word(b[k - 1])) || b.get(end).is_some_and(|&c| is_word(c)) {
                continue;
            }
            if let Some((vs, ve)) = value_after(b, end) {
                let v = &text[vs..ve];
                // `"code": 400` is a status, not an authorization code.
                let status_code =
                    *key == "code" && v.len() <= 5 && v.bytes().all(|c| c.is_ascii_digit());
                if !v.is_empty() && !status_code {
                    spans.push((vs, ve));
                }
            }
        }
    }
}

/// The value after a key ending at `i`: closing quotes, a separator, then
/// an opening quote or not.
fn value_after(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let skip = |i: &mut usize, set: &[u8]| {
        while b.get(*i).is_some_and(|c| set.contains(c)) {
            *i += 1;
        }
    };
    skip(&mut i, b"\"'\\");
    skip(&mut i, b" \t");
    match b.get(i..) {
        Some([b'=' | b':', ..]) => i += 1,
        Some([b'%', b'3', b'D' | b'd' | b'A' | b'a', ..]) => i += 3,
        _ => return None,
    }
    skip(&mut i, b" \t");
    // `\"value\"`: a quoted value inside an already escaped JSON string.
    if b.get(i) == Some(&b'\\') && matches!(b.get(i + 1), Some(b'"' | b'\'')) {
        let q = b[i + 1];
        let start = i + 2;
        let mut j = start;
        while j < b.len() && !(b[j] == b'\\' && b.get(j + 1) == Some(&q)) {
            j += 1;
        }
        return Some((start, j));
    }
    if let Some(&q) = b.get(i).filter(|&&c| c == b'"' || c == b'\'') {
        let start = i + 1;
        let mut j = start;
        // Up to the closing quote; an escaped one inside does not close.
        while j < b.len() && b[j] != q {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        return Some((start, j.min(b.len())));
    }
    let start = i;
    let mut j = i;
    while j < b.len() && is_value(b[j]) {
        j += 1;
    }
    Some((start, j))
}

/// `Bearer xxx` / `Basic xxx`: the credential after the scheme.
fn credential_spans(text: &str, spans: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    for scheme in ["bearer", "basic"] {
        for (k, _) in lower.match_indices(scheme) {
            let mut i = k + scheme.len();
            if (k > 0 && is_word(b[k - 1])) || b.get(i).is_some_and(|&c| is_word(c)) {
                continue;
            }
            let before = i;
            loop {
                match b.get(i..) {
                    Some([b' ' | b'\t' | b'+', ..]) => i += 1,
                    Some([b'%', b'2', b'0', ..]) => i += 3,
                    _ => break,
                }
            }
            let start = i;
            while i < b.len() && (is_run(b[i]) || b[i] == b'.') {
                i = run_end(b, i + 1);
            }
            if start > before && i - start >= 8 {
                spans.push((start, i));
            }
        }
    }
}

/// Long runs that look random (see [`looks_secret`]); at a cut mark a
/// shorter random-looking tail is redacted too.
fn run_spans(text: &str, spans: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !is_run(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        i = run_end(b, i);
        let run = &text[start..i];
        let at_cut = text[i..].starts_with(CUT_MARK);
        if looks_secret(run) || (at_cut && run.len() >= 8 && mixed(run)) {
            spans.push((start, i));
        }
    }
}

fn mixed(run: &str) -> bool {
    run.bytes().any(|c| c.is_ascii_digit()) && run.bytes().any(|c| c.is_ascii_alphabetic())
}

/// A run of base64/hex/percent characters at least 20 long that mixes
/// letters and digits, or switches case often (random letters), and is not
/// a SCREAMING_SNAKE constant. `a2423941f5be408c998d5f7207570990` and
/// `aIlsm1bCglDGvQKShmJAhHrBhDyshn` do; `invalid_client_credentials` and
/// `ApplicationNotFoundException` do not.
pub fn looks_secret(run: &str) -> bool {
    let body = run.trim_end_matches('=');
    if run.len() < MIN_RUN || body.is_empty() || !body.bytes().all(is_run) {
        return false;
    }
    let lower = run.bytes().any(|c| c.is_ascii_lowercase());
    let upper = run.bytes().any(|c| c.is_ascii_uppercase());
    if !lower && run.contains('_') {
        return false;
    }
    if mixed(run) {
        return true;
    }
    let switches = run
        .as_bytes()
        .windows(2)
        .filter(|w| w[0].is_ascii_lowercase() != w[1].is_ascii_lowercase())
        .count();
    lower && upper && switches * 3 >= run.len()
}

#[cfg(test)]
mod tests;
