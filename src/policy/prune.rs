//! Keeping a conversation within a token budget: the heavy parts of the
//! context-prune policy, in Rust. The script picks the mode and budget; these
//! functions cut.
//!
//! Invariants of every cut: the system prompt stays, the last user message
//! stays, and an assistant message with tool calls is never separated from
//! the tool results that answer it (cuts happen only between turns, a turn
//! being a user message and everything up to the next one).

use std::collections::HashMap;

use serde_json::{Value, json};

/// Rough tokens of one message: about four characters a token, plus a few
/// for the message's framing.
pub fn message_tokens(message: &Value) -> usize {
    let mut chars = text_of(message).chars().count();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            chars += call.pointer("/function/arguments").and_then(Value::as_str).map_or(0, str::len);
            chars += call.pointer("/function/name").and_then(Value::as_str).map_or(0, str::len);
        }
    }
    chars.div_ceil(4) + 4
}

/// Rough tokens of a conversation.
pub fn tokens(messages: &[Value]) -> usize {
    messages.iter().map(message_tokens).sum()
}

/// The text of a message: its string content, or its text parts joined.
pub fn text_of(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The conversation cut into: leading system messages, then turns.
struct Shape {
    system: usize,
    /// Start index of each turn (a user message, or the first non-system one).
    turns: Vec<usize>,
}

fn shape(messages: &[Value]) -> Shape {
    let system = messages.iter().take_while(|m| matches!(role(m), "system" | "developer")).count();
    let mut turns = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(system) {
        if turns.is_empty() || role(m) == "user" {
            turns.push(i);
        }
    }
    Shape { system, turns }
}

fn turn_range(shape: &Shape, t: usize, len: usize) -> std::ops::Range<usize> {
    shape.turns[t]..shape.turns.get(t + 1).copied().unwrap_or(len)
}

/// Keeps the system prompt and the last `n` turns (at least one). Returns
/// the dropped messages.
pub fn keep_last_turns(messages: &mut Vec<Value>, n: usize) -> Vec<Value> {
    let s = shape(messages);
    let keep = n.max(1);
    if s.turns.len() <= keep {
        return Vec::new();
    }
    let cut_from = s.turns[0];
    let cut_to = s.turns[s.turns.len() - keep];
    messages.drain(cut_from..cut_to).collect()
}

/// Drops the oldest turns until the conversation fits `budget` tokens (or
/// only the last turn is left). Returns the dropped messages.
pub fn fit_tokens(messages: &mut Vec<Value>, budget: usize) -> Vec<Value> {
    let s = shape(messages);
    let mut total = tokens(messages);
    let mut drop_turns = 0;
    while total > budget && drop_turns + 1 < s.turns.len() {
        let r = turn_range(&s, drop_turns, messages.len());
        total -= tokens(&messages[r]);
        drop_turns += 1;
    }
    if drop_turns == 0 {
        return Vec::new();
    }
    let to = s.turns[drop_turns];
    messages.drain(s.turns[0]..to).collect()
}

/// Keeps the system prompt, the first exchange and as many recent turns as
/// fit `budget`; the turns in between are replaced by one message holding
/// an extractive summary of at most `summary_tokens`. Returns the dropped
/// messages.
pub fn reservoir(messages: &mut Vec<Value>, budget: usize, summary_tokens: usize) -> Vec<Value> {
    let s = shape(messages);
    if tokens(messages) <= budget || s.turns.len() < 3 {
        return Vec::new();
    }
    let len = messages.len();
    let head = tokens(&messages[..s.system]) + tokens(&messages[turn_range(&s, 0, len)]);
    let mut room = budget.saturating_sub(head + summary_tokens + 8);
    // Walk back from the newest turn; the last turn is always kept.
    let mut first_kept = s.turns.len() - 1;
    room = room.saturating_sub(tokens(&messages[turn_range(&s, first_kept, len)]));
    while first_kept > 1 {
        let t = tokens(&messages[turn_range(&s, first_kept - 1, len)]);
        if t > room {
            break;
        }
        room -= t;
        first_kept -= 1;
    }
    if first_kept <= 1 {
        return Vec::new();
    }
    let from = s.turns[1];
    let to = s.turns[first_kept];
    let dropped: Vec<Value> = messages.drain(from..to).collect();
    let summary = summarize(&dropped, summary_tokens);
    if !summary.is_empty() {
        let note = json!({
            "role": "system",
            "content": format!("Summary of the earlier conversation (condensed by the gateway): {summary}"),
        });
        messages.insert(from, note);
    }
    dropped
}

/// Words too common to say what a sentence is about.
const STOPWORDS: &[&str] = &[
    "the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "for", "with", "is", "are", "was", "were", "be",
    "been", "it", "this", "that", "these", "those", "i", "you", "we", "they", "he", "she", "my", "your", "our", "as",
    "at", "by", "from", "not", "no", "do", "does", "did", "can", "could", "would", "should", "will", "so", "if",
    "then", "than", "there", "here", "what", "which", "who", "how", "me", "him", "her", "them", "its", "also", "just",
];

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
}

/// An extractive summary: the sentences of `messages` that score highest on
/// term frequency, within `budget` tokens, in their original order.
pub fn summarize(messages: &[Value], budget: usize) -> String {
    let sentences: Vec<String> = messages
        .iter()
        .flat_map(|m| {
            text_of(m)
                .split_inclusive(['.', '!', '?', '\n'])
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() > 3)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut frequency: HashMap<String, f64> = HashMap::new();
    for s in &sentences {
        for w in words(s) {
            *frequency.entry(w).or_default() += 1.0;
        }
    }
    let top = frequency.values().copied().fold(1.0, f64::max);
    let mut scored: Vec<(f64, usize)> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ws: Vec<String> = words(s).collect();
            let sum: f64 = ws.iter().map(|w| frequency[w] / top).sum();
            // Normalised by length so that long sentences do not win by size alone.
            (sum / (ws.len().max(1) as f64).sqrt(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // Sentences far below the best say little about the dropped turns.
    let floor = scored.first().map_or(0.0, |(best, _)| best * 0.5);
    let mut chosen = Vec::new();
    let mut used = 0;
    for (score, i) in scored {
        if score < floor {
            break;
        }
        let cost = sentences[i].chars().count().div_ceil(4) + 1;
        if used + cost > budget {
            continue;
        }
        used += cost;
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen.into_iter().map(|i| sentences[i].as_str()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(turns: usize, words_each: usize) -> Vec<Value> {
        let mut m = vec![json!({"role": "system", "content": "You are helpful."})];
        for t in 0..turns {
            let text = format!("Question {t} about rust borrow checker lifetimes. ").repeat(words_each);
            m.push(json!({"role": "user", "content": text}));
            m.push(
                json!({"role": "assistant", "content": format!("Answer {t}. The borrow checker enforces lifetimes.")}),
            );
        }
        m.push(json!({"role": "user", "content": "And the last question?"}));
        m
    }

    fn with_tool_turn() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "sys"}),
            json!({"role": "user", "content": "old question ".repeat(50)}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "tool output ".repeat(50)}),
            json!({"role": "assistant", "content": "done"}),
            json!({"role": "user", "content": "last"}),
        ]
    }

    #[test]
    fn keep_last_turns_keeps_system_and_whole_turns() {
        let mut m = conversation(5, 1);
        let dropped = keep_last_turns(&mut m, 2);
        assert_eq!(dropped.len(), 8);
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m.len(), 1 + 2 + 1);
        assert_eq!(m.last().unwrap()["content"], "And the last question?");
    }

    #[test]
    fn fit_tokens_drops_oldest_turns_and_never_the_last_user_message() {
        let mut m = conversation(6, 20);
        let before = tokens(&m);
        fit_tokens(&mut m, before / 2);
        assert!(tokens(&m) <= before / 2, "{} > {}", tokens(&m), before / 2);
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m.last().unwrap()["content"], "And the last question?");
        // An impossible budget still keeps the system prompt and the last turn.
        let mut tiny = conversation(3, 20);
        fit_tokens(&mut tiny, 1);
        assert_eq!(tiny.len(), 2);
    }

    #[test]
    fn a_tool_call_is_never_separated_from_its_result() {
        let mut m = with_tool_turn();
        fit_tokens(&mut m, 30);
        let roles: Vec<&str> = m.iter().map(role).collect();
        assert_eq!(roles, ["system", "user"], "the whole tool turn goes, not half of it");
        let mut m = with_tool_turn();
        fit_tokens(&mut m, 10_000);
        assert_eq!(m.len(), 6);
    }

    #[test]
    fn reservoir_keeps_head_and_tail_and_summarises_the_middle() {
        let mut m = conversation(8, 10);
        let budget = tokens(&m) / 2;
        let dropped = reservoir(&mut m, budget, 60);
        assert!(!dropped.is_empty());
        assert_eq!(m[0]["role"], "system");
        assert!(m[1]["content"].as_str().unwrap().starts_with("Question 0"), "the first exchange stays");
        let summary = m.iter().find(|x| x["content"].as_str().is_some_and(|c| c.starts_with("Summary"))).unwrap();
        assert!(summary["content"].as_str().unwrap().contains("borrow"));
        assert_eq!(m.last().unwrap()["content"], "And the last question?");
        assert!(tokens(&m) <= budget + 10, "{} > {budget}", tokens(&m));
    }

    #[test]
    fn summaries_keep_the_most_representative_sentences_in_order() {
        let msgs = vec![
            json!({"role": "user", "content": "The database migration failed on the orders table. I like cats. The migration needs the orders index rebuilt."}),
        ];
        let s = summarize(&msgs, 30);
        assert!(s.contains("migration"), "{s}");
        assert!(!s.contains("cats"), "{s}");
        assert!(s.find("failed").unwrap() < s.find("rebuilt").unwrap_or(usize::MAX));
    }
}
