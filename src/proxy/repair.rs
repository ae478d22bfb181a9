//! Tool-call repair: an upstream's tool call whose arguments are not valid
//! JSON, or whose name differs from the request's tool only in case, is
//! mended where the mend is unambiguous — a markdown fence around the JSON,
//! trailing commas, single quotes in JSON that has no double quote, an
//! object cut short after a complete value (only its closing brackets
//! missing), empty arguments — and counted in
//! `freeway_tool_call_repairs_total{kind}`. Anything else fails the
//! attempt, which falls back to the next candidate: an agent never gets a
//! call it cannot run. Whole answers are checked here ([`answer`]); streams
//! hold their tool calls until they are complete and check them by the
//! same rules ([`stream`]).

pub mod stream;

use serde_json::Value;

/// What was mended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mend {
    /// Empty arguments became `{}`.
    Empty,
    /// A markdown code fence was taken off.
    Fence,
    /// Commas before a closing bracket were dropped.
    TrailingComma,
    /// Single quotes became double quotes.
    SingleQuotes,
    /// Missing closing brackets were added.
    Truncated,
    /// The tool name's case was changed to the request's.
    NameCase,
}

impl Mend {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Fence => "fence",
            Self::TrailingComma => "trailing_comma",
            Self::SingleQuotes => "single_quotes",
            Self::Truncated => "truncated",
            Self::NameCase => "name_case",
        }
    }
}

/// `text` as valid JSON arguments: `Ok(None)` when it already is, the
/// mended text and how, or `Err` with why it cannot be mended.
pub fn arguments(text: &str) -> Result<Option<(String, Vec<Mend>)>, String> {
    if serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object()) {
        return Ok(None);
    }
    let mut mends = Vec::new();
    let mut current = text.trim().to_owned();
    if current.is_empty() {
        return Ok(Some(("{}".to_owned(), vec![Mend::Empty])));
    }
    if let Some(inner) = unfence(&current) {
        current = inner;
        mends.push(Mend::Fence);
    }
    if !current.contains('"') && current.contains('\'') {
        current = current.replace('\'', "\"");
        mends.push(Mend::SingleQuotes);
    }
    let without = drop_trailing_commas(&current);
    if without != current {
        current = without;
        mends.push(Mend::TrailingComma);
    }
    if let Some(closed) = close(&current) {
        current = closed;
        mends.push(Mend::Truncated);
    }
    match serde_json::from_str::<Value>(&current) {
        Ok(v) if v.is_object() => Ok(Some((current, mends))),
        Ok(_) => Err("the arguments are not a JSON object".to_owned()),
        Err(e) => Err(format!("the arguments are not valid JSON ({e})")),
    }
}

/// The JSON inside a ```` ``` ```` fence (with or without a language).
fn unfence(text: &str) -> Option<String> {
    let rest = text.strip_prefix("```")?;
    let rest = rest
        .split_once('\n')
        .map_or(rest, |(first, body)| if first.trim().is_empty() || !first.contains('{') { body } else { rest });
    Some(rest.trim_end().strip_suffix("```")?.trim().to_owned())
}

/// Walks `text` outside strings: `f(index, char)` for each character that
/// is not inside a JSON string.
fn outside_strings(text: &str, mut f: impl FnMut(usize, char)) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else {
            f(i, c);
        }
    }
    in_string
}

/// `text` without commas that stand right before a closing bracket.
fn drop_trailing_commas(text: &str) -> String {
    let mut drop = Vec::new();
    let mut last_comma: Option<usize> = None;
    outside_strings(text, |i, c| match c {
        ',' => last_comma = Some(i),
        '}' | ']' => {
            if let Some(comma) = last_comma.take() {
                drop.push(comma);
            }
        }
        c if c.is_whitespace() => {}
        _ => last_comma = None,
    });
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if !drop.contains(&i) {
            out.push(c);
        }
    }
    out
}

/// `text` with the closing brackets it lacks, when it stops after a
/// complete value (not inside a string, not after a `,` or `:`); `None`
/// when nothing is missing or the end is ambiguous.
fn close(text: &str) -> Option<String> {
    let mut open = Vec::new();
    let mut last = ' ';
    let in_string = outside_strings(text, |_, c| {
        match c {
            '{' => open.push('}'),
            '[' => open.push(']'),
            '}' | ']' => {
                open.pop();
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last = c;
        }
    });
    if in_string || open.is_empty() || matches!(last, ',' | ':' | '{' | '[') && !text.trim_end().ends_with('"') {
        return None;
    }
    let mut out = text.trim_end().to_owned();
    out.extend(open.iter().rev());
    Some(out)
}

/// A mended answer, and what was mended.
pub type Mended = (Vec<u8>, Vec<Mend>);

/// A whole chat answer with its tool calls mended (`None` when nothing
/// needed it) and what was mended, or why one cannot be. `request` is the
/// client's chat request (its tools' names are read only when a name needs
/// checking).
pub fn answer(body: &[u8], request: &[u8]) -> Result<Option<Mended>, String> {
    if memchr::memmem::find(body, b"\"tool_calls\"").is_none() {
        return Ok(None);
    }
    let Ok(mut answer) = serde_json::from_slice::<Value>(body) else { return Ok(None) };
    let mut offered: Option<Vec<String>> = None;
    let mut mends = Vec::new();
    let choices = answer.get_mut("choices").and_then(Value::as_array_mut);
    for choice in choices.into_iter().flatten() {
        let calls = choice.pointer_mut("/message/tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten() {
            let Some(function) = call.get_mut("function") else { continue };
            if let Some(text) = function.get("arguments").and_then(Value::as_str)
                && let Some((fixed, how)) = arguments(text)?
            {
                function["arguments"] = Value::String(fixed);
                mends.extend(how);
            }
            let Some(name) = function.get("name").and_then(Value::as_str) else { continue };
            let offered = offered.get_or_insert_with(|| tool_names(request));
            if let Some(right) = offered_name(name, offered)? {
                function["name"] = Value::String(right.to_owned());
                mends.push(Mend::NameCase);
            }
        }
    }
    if mends.is_empty() {
        return Ok(None);
    }
    Ok(serde_json::to_vec(&answer).ok().map(|body| (body, mends)))
}

/// The names of the function tools a chat request offers.
fn tool_names(request: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Tools {
        #[serde(default)]
        tools: Vec<Value>,
    }
    serde_json::from_slice::<Tools>(request)
        .map(|t| t.tools.iter().filter_map(|t| t.pointer("/function/name")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// `name` as the request spells it: `Ok(None)` when it already does (or
/// the request names no function tool), the request's spelling when only
/// the case differs, `Err` when the request offers no such tool.
fn offered_name<'a>(name: &str, offered: &'a [String]) -> Result<Option<&'a str>, String> {
    if offered.is_empty() || offered.iter().any(|o| o == name) {
        return Ok(None);
    }
    match tool_name(name, offered) {
        Some(right) => Ok(Some(right)),
        None => Err(format!("the upstream called a tool the request does not offer: `{name}`")),
    }
}

/// The request's tool named like `name` but for case, when exactly one is.
pub fn tool_name<'a>(name: &str, offered: &'a [String]) -> Option<&'a str> {
    if offered.iter().any(|o| o == name) {
        return None;
    }
    let mut matches = offered.iter().filter(|o| o.eq_ignore_ascii_case(name));
    let found = matches.next()?;
    matches.next().is_none().then_some(found.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mended(text: &str) -> (Value, Vec<Mend>) {
        let (fixed, mends) = arguments(text).unwrap().unwrap();
        (serde_json::from_str(&fixed).unwrap(), mends)
    }

    #[test]
    fn valid_arguments_are_left_alone() {
        assert_eq!(arguments(r#"{"a": [1, 2], "b": "x, }"}"#).unwrap(), None);
    }

    #[test]
    fn unambiguous_damage_is_mended() {
        let a = serde_json::json!({"path": "a.txt", "n": [1, 2]});
        assert_eq!(mended("```json\n{\"path\": \"a.txt\", \"n\": [1, 2]}\n```"), (a.clone(), vec![Mend::Fence]));
        assert_eq!(mended(r#"{"path": "a.txt", "n": [1, 2,],}"#), (a.clone(), vec![Mend::TrailingComma]));
        assert_eq!(mended("{'path': 'a.txt', 'n': [1, 2]}"), (a.clone(), vec![Mend::SingleQuotes]));
        assert_eq!(mended(r#"{"path": "a.txt", "n": [1, 2]"#), (a.clone(), vec![Mend::Truncated]));
        assert_eq!(mended(r#"{"path": "a.txt", "n": [1, 2"#), (a, vec![Mend::Truncated]));
        assert_eq!(mended("  "), (serde_json::json!({}), vec![Mend::Empty]));
        let commas_in_strings = mended(r#"{"s": "a, }", "t": 1,}"#).0;
        assert_eq!(commas_in_strings, serde_json::json!({"s": "a, }", "t": 1}), "commas inside strings stay");
    }

    #[test]
    fn ambiguous_damage_is_refused() {
        for text in [
            r#"{"content": "half a fi"#,  // cut inside a string: the rest is lost
            r#"{"path": "a.txt", "n":"#,  // cut after a key
            r#"{"path": "a.txt","#,       // cut after a comma
            "{'it's': 'x'}",              // quotes that cannot be told apart
            "[1, 2]",                     // not an object
            "call write_file with a.txt", // not JSON at all
        ] {
            assert!(arguments(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_tool_name_is_matched_without_case_only_when_one_matches() {
        let offered = vec!["Write".to_owned(), "Read".to_owned(), "read".to_owned()];
        assert_eq!(tool_name("write", &offered), Some("Write"));
        assert_eq!(tool_name("Write", &offered), None, "already right");
        assert_eq!(tool_name("READ", &offered), None, "two tools match: ambiguous");
        assert_eq!(tool_name("edit", &offered), None);
    }
}
