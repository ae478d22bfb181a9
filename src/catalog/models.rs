//! What freeway knows about a model: from the catalog, the config, and the
//! provider's own listing (discovery), plus what its id says (size,
//! reasoning). Tiers group models for routing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::config::Limits;

/// A model a provider serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The upstream id.
    pub id: Arc<str>,
    /// Context window, when known.
    pub context: Option<u64>,
    /// Free on the provider's free tier.
    pub free: bool,
    /// Limits per key (provider defaults merged with the model's own).
    pub limits: Limits,
    /// Capabilities and traits: chat, tools, reasoning, code, vision, fast...
    pub tags: Vec<String>,
    /// Parameters in billions, when known or readable from the id.
    pub params_b: Option<f64>,
    /// Parameters active per token (mixture of experts), in billions.
    pub active_params_b: Option<f64>,
    /// A reasoning model (by tag, listing or id).
    pub reasoning: bool,
    /// Found by discovery rather than written in the catalog or config.
    pub discovered: bool,
}

impl ModelInfo {
    /// A model with what its id and tags say filled in.
    pub fn new(id: &str, context: Option<u64>, free: bool, limits: Limits, tags: Vec<String>) -> Self {
        let (params_b, active_params_b) = params_from_id(id);
        let reasoning = tags.iter().any(|t| t == "reasoning") || reasoning_from_id(id);
        Self { id: Arc::from(id), context, free, limits, tags, params_b, active_params_b, reasoning, discovered: false }
    }

    /// The model's tier.
    pub fn tier(&self) -> Tier {
        if self.reasoning {
            return Tier::Reasoning;
        }
        match self.params_b {
            Some(p) if p < 10.0 => Tier::Lite,
            Some(p) if p > 72.0 => Tier::Large,
            _ => Tier::Standard,
        }
    }
}

/// A size class of models: under 10B lite, 10–72B standard, over 72B large,
/// reasoning models apart; unknown size counts as standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Under 10B parameters.
    Lite,
    /// 10B to 72B, or unknown.
    Standard,
    /// Over 72B.
    Large,
    /// Reasoning models.
    Reasoning,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lite => "lite",
            Self::Standard => "standard",
            Self::Large => "large",
            Self::Reasoning => "reasoning",
        })
    }
}

/// A provider's models, with an index by id. Replaced whole when discovery
/// refreshes the list.
#[derive(Debug, Clone, Default)]
pub struct ModelTable {
    list: Vec<ModelInfo>,
    index: HashMap<Arc<str>, usize>,
}

impl ModelTable {
    /// A table of `models` (the first of two with one id wins).
    pub fn new(models: Vec<ModelInfo>) -> Self {
        let mut list: Vec<ModelInfo> = Vec::with_capacity(models.len());
        let mut index = HashMap::with_capacity(models.len());
        for m in models {
            if !index.contains_key(&m.id) {
                index.insert(m.id.clone(), list.len());
                list.push(m);
            }
        }
        Self { list, index }
    }

    /// A model by id.
    pub fn get(&self, id: &str) -> Option<&ModelInfo> {
        self.index.get(id).map(|&i| &self.list[i])
    }

    /// Every model, static ones first.
    pub fn iter(&self) -> std::slice::Iter<'_, ModelInfo> {
        self.list.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Total and active parameters (billions) written in a model id:
/// `llama-3.3-70b` → 70; `qwen3-235b-a22b` → 235 total, 22 active;
/// `mixtral-8x7b` → 56; `smollm-135m` → 0.135.
pub fn params_from_id(id: &str) -> (Option<f64>, Option<f64>) {
    let lower = id.to_ascii_lowercase();
    let (mut total, mut active) = (None, None);
    for part in lower.split(['-', '_', '/', ':', '@', ' ']) {
        if let Some(n) = part.strip_prefix('a').and_then(|p| number_with_unit(p, 'b')) {
            active = Some(n);
        } else if let Some((experts, size)) = part.split_once('x')
            && let (Ok(e), Some(s)) = (experts.parse::<f64>(), number_with_unit(size, 'b'))
        {
            total = Some(e * s);
        } else if let Some(n) = number_with_unit(part, 'b') {
            total = Some(n);
        } else if let Some(n) = number_with_unit(part, 'm') {
            total = Some(n / 1000.0);
        }
    }
    (total, active)
}

/// `70b` → 70 for unit `b`; `1.5b` → 1.5. The part must be only that.
fn number_with_unit(part: &str, unit: char) -> Option<f64> {
    let digits = part.strip_suffix(unit)?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    digits.parse::<f64>().ok().filter(|n| *n > 0.0)
}

/// Ids that name reasoning models: `deepseek-r1`, `qwq-32b`, `*-thinking`,
/// `*-reasoner`, `magistral`, `o1`/`o3`/`o4-mini`...
pub fn reasoning_from_id(id: &str) -> bool {
    let lower = id.to_ascii_lowercase();
    lower.split(['-', '_', '/', ':', '.', '@']).any(|part| {
        matches!(
            part,
            "r1" | "qwq" | "thinking" | "think" | "reasoner" | "reasoning" | "magistral" | "o1" | "o3" | "o4"
        ) || part.starts_with("qwq")
            || part.starts_with("deepseek-r")
    }) || lower.contains("thinking")
        || lower.contains("reasoner")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_from_ids() {
        assert_eq!(params_from_id("llama-3.3-70b-versatile"), (Some(70.0), None));
        assert_eq!(params_from_id("Qwen/Qwen3-235B-A22B"), (Some(235.0), Some(22.0)));
        assert_eq!(params_from_id("nvidia/nemotron-3-super-120b-a12b:free"), (Some(120.0), Some(12.0)));
        assert_eq!(params_from_id("mixtral-8x7b-32768"), (Some(56.0), None));
        assert_eq!(params_from_id("qwen2.5:7b"), (Some(7.0), None));
        assert_eq!(params_from_id("Qwen2.5-Coder-1.5B-Instruct"), (Some(1.5), None));
        assert_eq!(params_from_id("smollm2-135m"), (Some(0.135), None));
        assert_eq!(params_from_id("gpt-4o-mini"), (None, None));
        assert_eq!(params_from_id("glm-4.7-flash"), (None, None));
    }

    #[test]
    fn reasoning_is_read_from_ids() {
        for id in
            ["deepseek-ai/DeepSeek-R1", "qwq-32b", "gemini-2.0-flash-thinking-exp", "deepseek-reasoner", "o3-mini"]
        {
            assert!(reasoning_from_id(id), "{id}");
        }
        for id in ["llama-3.3-70b", "gpt-4o", "qwen3-coder", "r1chard"] {
            assert!(!reasoning_from_id(id), "{id}");
        }
    }

    #[test]
    fn tiers_follow_size_and_reasoning() {
        let m = |id: &str, tags: &[&str]| {
            ModelInfo::new(id, None, true, Limits::default(), tags.iter().map(|t| (*t).to_owned()).collect()).tier()
        };
        assert_eq!(m("llama-3.1-8b-instant", &[]), Tier::Lite);
        assert_eq!(m("llama-3.3-70b", &[]), Tier::Standard);
        assert_eq!(m("gpt-oss-120b", &[]), Tier::Large);
        assert_eq!(m("deepseek-r1-distill-llama-70b", &[]), Tier::Reasoning);
        assert_eq!(m("mystery-model", &["reasoning"]), Tier::Reasoning);
        assert_eq!(m("mystery-model", &[]), Tier::Standard);
    }
}
