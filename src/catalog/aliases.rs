//! Model names that clients hard-code (`claude-sonnet-4-5`, `gpt-5-codex`),
//! mapped by glob to a freeway model name (`aliases:`; by default
//! `claude-*` → `auto`). An alias applies only to a name nothing routes:
//! a provider that serves `claude-sonnet-4-5` itself keeps it.

use indexmap::IndexMap;
use wildmatch::WildMatch;

/// The aliases, in the order written (the first match wins).
#[derive(Debug, Default)]
pub struct Aliases {
    globs: Vec<(WildMatch, String)>,
}

impl Aliases {
    /// From `aliases:`; `None` gives the default (`claude-*` → `auto`).
    pub fn new(config: Option<&IndexMap<String, String>>) -> Self {
        let globs = match config {
            Some(map) => map.iter().map(|(glob, target)| (WildMatch::new(glob), target.clone())).collect(),
            None => vec![(WildMatch::new("claude-*"), "auto".to_owned())],
        };
        Self { globs }
    }

    /// The freeway model name `model` maps to, if an alias matches it.
    pub fn target(&self, model: &str) -> Option<&str> {
        self.globs.iter().find(|(glob, _)| glob.matches(model)).map(|(_, target)| target.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_glob_wins_and_the_default_maps_claude_to_auto() {
        let default = Aliases::new(None);
        assert_eq!(default.target("claude-sonnet-4-5-20250929"), Some("auto"));
        assert_eq!(default.target("gpt-5"), None);
        let mut map = IndexMap::new();
        map.insert("claude-*opus*".to_owned(), "auto:reasoning".to_owned());
        map.insert("claude-*".to_owned(), "auto".to_owned());
        map.insert("gpt-5?".to_owned(), "code-free".to_owned());
        let custom = Aliases::new(Some(&map));
        assert_eq!(custom.target("claude-opus-4-1"), Some("auto:reasoning"));
        assert_eq!(custom.target("claude-haiku-4-5"), Some("auto"));
        assert_eq!(custom.target("gpt-5x"), Some("code-free"));
        assert_eq!(custom.target("gpt-5"), None, "`?` is one character");
    }
}
