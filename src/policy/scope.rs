//! What a per-request hook declares it acts on, read once when the
//! pipeline compiles, so that requests it would ignore never enter Rhai.
//!
//! Two kinds of declaration:
//! - model globs (`fn request_models()`, `fn prepare_models()`): an array of
//!   patterns over the model the hook sees as `req.model`; `*` is any run of
//!   characters (`/` included), `?` one character, and a leading `!`
//!   excludes. A model is in scope when some plain pattern matches it and no
//!   `!` pattern does, whatever their order (so a list reads as a set, not a
//!   program).
//! - a size (`fn prepare_tokens(settings)`): `#{above: n, window_less: r}`,
//!   for a `prepare` hook that acts only on long conversations: it runs when
//!   the token estimate exceeds `above`, or exceeds the first candidate's
//!   context window less `r`. The host compares numbers it already has.

use rhai::{AST, Dynamic, Engine, Map};
use wildmatch::WildMatch;

use super::CompileError;

/// Model globs, with exclusions.
#[derive(Debug)]
pub struct Models {
    include: Vec<WildMatch>,
    exclude: Vec<WildMatch>,
}

impl Models {
    /// The scope of `patterns` (`!glob` excludes).
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        let (mut include, mut exclude) = (Vec::new(), Vec::new());
        for pattern in patterns {
            match pattern.strip_prefix('!') {
                Some(glob) => exclude.push(WildMatch::new(glob)),
                None => include.push(WildMatch::new(pattern)),
            }
        }
        Self { include, exclude }
    }

    /// Whether `model` is in scope.
    pub fn matches(&self, model: &str) -> bool {
        self.include.iter().any(|g| g.matches(model)) && !self.exclude.iter().any(|g| g.matches(model))
    }
}

/// The conversation size a `prepare` hook acts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Acts when the estimate exceeds this many tokens.
    pub above: Option<i64>,
    /// Acts when the estimate exceeds the context window less this.
    pub window_less: Option<i64>,
}

impl Size {
    /// Whether a conversation of (at most) `tokens` may be acted on, with
    /// `window` the first candidate's context window (0: unknown).
    pub fn may_act(&self, tokens: i64, window: i64) -> bool {
        self.above.is_some_and(|above| tokens > above)
            || self.window_less.is_some_and(|less| window > 0 && tokens > window.saturating_sub(less))
    }
}

/// Everything one script declares.
#[derive(Debug, Default)]
pub struct Declared {
    /// Models the `request` hook acts on (`None`: every request).
    pub request: Option<Models>,
    /// Models the `prepare` hook acts on (`None`: every request).
    pub prepare: Option<Models>,
    /// The size the `prepare` hook acts from (`None`: any size).
    pub prepare_size: Option<Size>,
}

/// Reads the declarations `ast` (from `file`, whose source is `text`)
/// defines, calling each once with `engine`.
pub fn read(engine: &Engine, ast: &AST, file: &str, text: &str, settings: &Dynamic) -> Result<Declared, CompileError> {
    let fail = |name: &str, message: String| CompileError { file: file.to_owned(), line: line_of(text, name), message };
    let call = |name: &str, args: Vec<Dynamic>| -> Result<Option<Dynamic>, CompileError> {
        if !ast.iter_functions().any(|f| f.name == name && f.params.len() == args.len()) {
            return Ok(None);
        }
        let options = rhai::CallFnOptions::new().eval_ast(false);
        let mut scope = rhai::Scope::new();
        engine.call_fn_with_options::<Dynamic>(options, &mut scope, ast, name, args).map(Some).map_err(|e| {
            CompileError {
                file: file.to_owned(),
                line: e.position().line().or_else(|| line_of(text, name)),
                message: e.to_string(),
            }
        })
    };
    let models = |name: &str| -> Result<Option<Models>, CompileError> {
        let Some(value) = call(name, Vec::new())? else { return Ok(None) };
        let wrong = || fail(name, format!("`{name}` must return an array of model-name globs (strings)"));
        let items = value.into_array().map_err(|_| wrong())?;
        let mut patterns = Vec::with_capacity(items.len());
        for item in items {
            patterns.push(item.into_immutable_string().map_err(|_| wrong())?);
        }
        Ok(Some(Models::new(patterns.iter().map(|p| p.as_str()))))
    };
    let size = || -> Result<Option<Size>, CompileError> {
        let Some(value) = call(PREPARE_TOKENS, vec![settings.clone()])? else { return Ok(None) };
        let wrong = || {
            fail(
                PREPARE_TOKENS,
                format!("`{PREPARE_TOKENS}` must return #{{above: int, window_less: int}} (at least one)"),
            )
        };
        let map = value.try_cast::<Map>().ok_or_else(wrong)?;
        let int = |key: &str| -> Result<Option<i64>, CompileError> {
            match map.get(key) {
                None => Ok(None),
                Some(v) if v.is_unit() => Ok(None),
                Some(v) => v.as_int().map(Some).map_err(|_| wrong()),
            }
        };
        if map.keys().any(|k| k.as_str() != "above" && k.as_str() != "window_less") {
            return Err(wrong());
        }
        let size = Size { above: int("above")?, window_less: int("window_less")? };
        // Neither bound given (say, settings that configure none): the hook
        // may act on any size, as without a declaration.
        Ok((size.above.is_some() || size.window_less.is_some()).then_some(size))
    };
    Ok(Declared { request: models(REQUEST_MODELS)?, prepare: models(PREPARE_MODELS)?, prepare_size: size()? })
}

/// The declarations' names.
const REQUEST_MODELS: &str = "request_models";
const PREPARE_MODELS: &str = "prepare_models";
const PREPARE_TOKENS: &str = "prepare_tokens";

/// The line `fn name` is defined on (a wrong return value has no position
/// of its own).
fn line_of(text: &str, name: &str) -> Option<usize> {
    let head = format!("fn {name}");
    text.lines()
        .position(|l| l.trim_start().strip_prefix(&head).is_some_and(|rest| rest.trim_start().starts_with('(')))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names_with_exclusions_in_any_order() {
        let sticky = Models::new(["*", "!*/*"]);
        assert!(sticky.matches("auto"));
        assert!(sticky.matches("auto:large"));
        assert!(sticky.matches("free"));
        assert!(!sticky.matches("mock/mock-model"));
        assert!(!sticky.matches("openrouter/meta/llama:free"));
        assert!(!Models::new(["!*/*", "*"]).matches("p/m"), "order does not matter");
        let auto = Models::new(["auto"]);
        assert!(auto.matches("auto"));
        assert!(!auto.matches("auto:large") && !auto.matches("xauto") && !auto.matches(""));
        let tiers = Models::new(["auto*", "!auto:lite"]);
        assert!(tiers.matches("auto") && tiers.matches("auto:large") && !tiers.matches("auto:lite"));
        assert!(Models::new(["p?/m-*"]).matches("p1/m-8b"));
        assert!(!Models::new(["p?/m-*"]).matches("p10/m-8b"));
        assert!(!Models::new(Vec::<&str>::new()).matches("auto"), "an empty list acts on nothing");
        assert!(!Models::new(["!x"]).matches("y"), "exclusions alone include nothing");
    }

    #[test]
    fn a_size_acts_above_its_bound_or_near_the_window() {
        let prune = Size { above: None, window_less: Some(1024) };
        assert!(!prune.may_act(5000, 8192));
        assert!(prune.may_act(7169, 8192));
        assert!(!prune.may_act(1_000_000, 0), "unknown window, no bound");
        let budget = Size { above: Some(100), window_less: Some(1024) };
        assert!(budget.may_act(101, 0) && budget.may_act(101, 131_072) && !budget.may_act(100, 131_072));
    }

    #[test]
    fn declarations_are_read_and_checked() {
        let engine = Engine::new();
        let settings = Dynamic::from_map(Map::new());
        let read_text = |text: &str| read(&engine, &engine.compile(text).unwrap(), "t.rhai", text, &settings);
        let declared =
            read_text("fn request_models() { [\"*\", \"!*/*\"] }\nfn prepare_tokens(s) { #{window_less: 10} }")
                .unwrap();
        assert!(declared.request.as_ref().is_some_and(|m| m.matches("auto") && !m.matches("a/b")));
        assert!(declared.prepare.is_none());
        assert_eq!(declared.prepare_size, Some(Size { above: None, window_less: Some(10) }));
        assert!(read_text("fn prepare_tokens(s) { #{above: ()} }").unwrap().prepare_size.is_none());
        for (text, line) in [
            ("fn request(req, s) {}\n\nfn request_models() { \"auto\" }", 3),
            ("fn prepare_models() { [\"auto\", 1] }", 1),
            ("\nfn prepare_tokens(s) { 5 }", 2),
            ("\nfn prepare_tokens(s) { #{abov: 5} }", 2),
        ] {
            let e = read_text(text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("t.rhai", Some(line)), "{text}: {e}");
        }
    }
}
