//! Reading a YAML document into a schema type so that one run reports every
//! problem: each `${VAR}` problem, each unknown key and each type error,
//! wherever they are.
//!
//! serde stops at the first type error. So the document is deserialized in
//! passes: a value refused for its type is recorded, taken out of the tree
//! (its default applies instead) and the document is read again, until a
//! pass succeeds. Taking an item out of a sequence shifts the items after
//! it, so every path a later pass reports is translated back to the indices
//! of the file before it is shown or located.

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{ConfigError, Env, Problem, SourceMap, expand};

/// Type errors reported before giving up: past this many a file is not a
/// config with mistakes but something else, and each pass costs a full read.
const MAX_TYPE_ERRORS: usize = 100;

/// A YAML document deserialized into `T`, with what was found on the way.
pub(crate) struct Document<T> {
    /// The document, with a default wherever a value was refused.
    pub value: T,
    /// Unknown keys, malformed `${...}` references and type errors, each
    /// once. Empty when the document is clean.
    pub problems: Vec<Problem>,
    /// Paths whose strings referenced unset variables, with the names.
    pub unset: Vec<(String, Vec<String>)>,
    /// Paths (as in the file) of the values refused for their type: what
    /// `value` holds there is a default, not what the file says.
    pub rejected: Vec<String>,
    /// Lines of every key and item.
    pub map: SourceMap,
}

impl<T> Document<T> {
    /// Whether `path` is a refused value or lies inside one; a semantic
    /// check there would judge a default the file never asked for.
    pub fn is_rejected(&self, path: &str) -> bool {
        self.rejected.iter().any(|r| {
            r.is_empty() || path == r || path.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// One step of a path into the tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Key(String),
    Index(usize),
}

/// The dotted form the source map and messages use: `providers.groq.keys.1`.
fn dotted(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        if !out.is_empty() {
            out.push('.');
        }
        match step {
            Step::Key(k) => out.push_str(k),
            Step::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

/// Parses YAML into `T`: expands `${VAR}` in every string, and collects every
/// unknown key and every type error with its path and line. Fails only when
/// the text is not YAML, or holds more type errors than are worth listing.
pub(crate) fn parse_document<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    env: &Env,
) -> Result<Document<T>, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError { origin: origin.to_owned(), problems };
    let map = SourceMap::new(text);
    let mut tree: Value = serde_yaml::from_str(text).map_err(|e| {
        fail(vec![Problem {
            path: String::new(),
            line: e.location().map(|l| l.line()),
            message: format!("not valid YAML: {e}"),
        }])
    })?;
    if tree.is_null() {
        tree = Value::Mapping(serde_yaml::Mapping::new());
    }
    let mut problems = Vec::new();
    let mut unset = Vec::new();
    let mut expanded = Vec::new();
    expand_tree(&mut tree, String::new(), env, &mut problems, &mut unset, &mut expanded);

    let mut passes = Passes { removed: HashMap::new(), unknown: Vec::new(), seen: HashSet::new() };
    let mut rejected = Vec::new();
    let value = loop {
        let error = match passes.read::<T>(&tree) {
            Ok(value) => break Some(value),
            Err(error) => error,
        };
        if rejected.len() == MAX_TYPE_ERRORS {
            problems.push(Problem {
                path: String::new(),
                line: None,
                message: format!("more than {MAX_TYPE_ERRORS} values of the wrong type; stopped listing them"),
            });
            break None;
        }
        let current = error_steps(error.path());
        let message = as_written(&error.into_inner().to_string(), &expanded, &passes.original(&current));
        match passes.remove(&mut tree, &current) {
            Some(original) => {
                let path = dotted(&original);
                problems.push(Problem { line: map.line(&path), message, path: path.clone() });
                rejected.push(path);
            }
            // Nothing left to take out (the tree is already empty): no
            // further pass can learn more.
            None => {
                problems.push(Problem { path: String::new(), line: None, message });
                break None;
            }
        }
    };
    for steps in passes.unknown {
        let path = dotted(&steps);
        let key = match steps.last() {
            Some(Step::Key(k)) => k.clone(),
            Some(Step::Index(i)) => i.to_string(),
            None => String::new(),
        };
        problems.push(Problem { line: map.line(&path), message: format!("unknown key `{key}`"), path });
    }
    for p in &mut problems {
        if p.line.is_none() {
            p.line = map.line(&p.path);
        }
    }
    match value {
        Some(value) => Ok(Document { value, problems, unset, rejected, map }),
        None => {
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(fail(problems))
        }
    }
}

/// What the passes so far have learnt.
struct Passes {
    /// Items taken out of sequences: the sequence's path in the file, and
    /// the file's indices of its removed items, ascending.
    removed: HashMap<Vec<Step>, Vec<usize>>,
    /// Unknown keys found by any pass, in the file's indices, each once.
    unknown: Vec<Vec<Step>>,
    seen: HashSet<Vec<Step>>,
}

impl Passes {
    /// One pass: deserializes the tree as it is now, noting its unknown keys.
    fn read<T: DeserializeOwned>(&mut self, tree: &Value) -> Result<T, serde_path_to_error::Error<serde_yaml::Error>> {
        let mut ignored = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| ignored.push(ignored_steps(&p));
        let result = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(tree, &mut note));
        for steps in ignored {
            self.unknown_key(&steps);
        }
        result
    }

    fn unknown_key(&mut self, current: &[Step]) {
        let original = self.original(current);
        if self.seen.insert(original.clone()) {
            self.unknown.push(original);
        }
    }

    /// The path in the file of `current`, a path into the pruned tree.
    fn original(&self, current: &[Step]) -> Vec<Step> {
        let mut out = Vec::with_capacity(current.len());
        for step in current {
            match step {
                Step::Key(_) => out.push(step.clone()),
                Step::Index(i) => {
                    let mut index = *i;
                    // Every removed item at or before the index shifted the
                    // rest down by one.
                    for &gone in self.removed.get(&out).map(Vec::as_slice).unwrap_or_default() {
                        if gone <= index {
                            index += 1;
                        } else {
                            break;
                        }
                    }
                    out.push(Step::Index(index));
                }
            }
        }
        out
    }

    /// Takes the node at `current` out of the tree (or its nearest ancestor
    /// the tree has, when the error's path goes deeper than the tree) and
    /// returns its path in the file. `None` when only the root is left to
    /// take, and the root is already empty.
    fn remove(&mut self, tree: &mut Value, current: &[Step]) -> Option<Vec<Step>> {
        let depth = resolvable_depth(tree, current);
        let target = &current[..depth];
        let Some((last, parent_steps)) = target.split_last() else {
            if tree.as_mapping().is_some_and(serde_yaml::Mapping::is_empty) {
                return None;
            }
            *tree = Value::Mapping(serde_yaml::Mapping::new());
            return Some(Vec::new());
        };
        let original = self.original(target);
        let parent = node_mut(tree, parent_steps)?;
        match (untag(parent), last) {
            (Value::Mapping(map), Step::Key(k)) => {
                let key = map.keys().find(|key| key_name(key) == *k).cloned()?;
                map.shift_remove(&key);
            }
            (Value::Sequence(items), Step::Index(i)) => {
                items.remove(*i);
                if let Some((Step::Index(gone), seq)) = original.split_last() {
                    let removed = self.removed.entry(seq.to_vec()).or_default();
                    let at = removed.partition_point(|r| r < gone);
                    removed.insert(at, *gone);
                }
            }
            _ => return None,
        }
        Some(original)
    }
}

/// How many leading steps of `steps` name nodes that exist in `tree`.
fn resolvable_depth(tree: &Value, steps: &[Step]) -> usize {
    let mut node = tree;
    for (depth, step) in steps.iter().enumerate() {
        let next = match (untag_ref(node), step) {
            (Value::Mapping(map), Step::Key(k)) => map.iter().find(|(key, _)| key_name(key) == *k).map(|(_, v)| v),
            (Value::Sequence(items), Step::Index(i)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return depth,
        }
    }
    steps.len()
}

fn node_mut<'a>(tree: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    let mut node = tree;
    for step in steps {
        node = match (untag(node), step) {
            (Value::Mapping(map), Step::Key(k)) => {
                map.iter_mut().find(|(key, _)| key_name(key) == *k).map(|(_, v)| v)?
            }
            (Value::Sequence(items), Step::Index(i)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// A `!tag value` is read as its value.
fn untag(node: &mut Value) -> &mut Value {
    match node {
        Value::Tagged(tagged) => untag(&mut tagged.value),
        other => other,
    }
}

fn untag_ref(node: &Value) -> &Value {
    match node {
        Value::Tagged(tagged) => untag_ref(&tagged.value),
        other => other,
    }
}

/// A mapping key as paths spell it (YAML keys may be numbers or booleans).
fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_owned(),
    }
}

/// The steps of a type error's path. A step serde could not name (a map key
/// that is not a string) ends the path: the error is placed on its parent.
fn error_steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    let mut steps = Vec::new();
    for segment in path {
        match segment {
            serde_path_to_error::Segment::Seq { index } => steps.push(Step::Index(*index)),
            serde_path_to_error::Segment::Map { key } => steps.push(Step::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => break,
        }
    }
    steps
}

/// The steps of an ignored key's path; `Option` and newtype layers are not
/// steps in the file.
fn ignored_steps(path: &serde_ignored::Path<'_>) -> Vec<Step> {
    match path {
        serde_ignored::Path::Root => Vec::new(),
        serde_ignored::Path::Seq { parent, index } => {
            let mut steps = ignored_steps(parent);
            steps.push(Step::Index(*index));
            steps
        }
        serde_ignored::Path::Map { parent, key } => {
            let mut steps = ignored_steps(parent);
            steps.push(Step::Key(key.clone()));
            steps
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_steps(parent),
    }
}

/// serde's messages quote the value they refused (`invalid type: string
/// "…"`). When that value came from `${VAR}` it may be a key: show what the
/// file says instead. `at` is the refused value's path in the file.
fn as_written(message: &str, expanded: &[Expansion], at: &[Step]) -> String {
    let at = dotted(at);
    let mut out = message.to_owned();
    for e in expanded {
        let inside =
            at.is_empty() || e.path == at || e.path.strip_prefix(at.as_str()).is_some_and(|r| r.starts_with('.'));
        if inside && !e.value.is_empty() {
            out = out.replace(&format!("{:?}", e.value), &format!("{:?}", e.written));
        }
    }
    out
}

/// A string that held `${VAR}` references: where, as written, as expanded.
struct Expansion {
    path: String,
    written: String,
    value: String,
}

fn expand_tree(
    node: &mut Value,
    path: String,
    env: &Env,
    problems: &mut Vec<Problem>,
    unset: &mut Vec<(String, Vec<String>)>,
    expanded: &mut Vec<Expansion>,
) {
    let child = |key: &str| {
        if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
    };
    match node {
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(result) => {
                if !result.unset.is_empty() {
                    unset.push((path.clone(), result.unset));
                }
                let written = std::mem::replace(s, result.value);
                expanded.push(Expansion { path, written, value: s.clone() });
            }
            Err(message) => problems.push(Problem { path, line: None, message }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, child(&i.to_string()), env, problems, unset, expanded);
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                expand_tree(value, child(&key_name(key)), env, problems, unset, expanded);
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, env, problems, unset, expanded),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct Doc {
        n: u32,
        items: Vec<Item>,
        nested: Vec<Vec<u32>>,
        opt: Option<Item>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct Item {
        name: String,
        size: u32,
    }

    fn parse(text: &str) -> Result<Document<Doc>, ConfigError> {
        parse_document::<Doc>(text, "t", &Env::from_map([("SECRET", "sk-very-secret-value")]))
    }

    fn shown(doc: &Document<Doc>) -> Vec<String> {
        let mut problems = doc.problems.clone();
        problems.sort_by_key(|p| p.line);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_type_error_and_unknown_key_is_reported_with_the_file_indices() {
        let text = "n: many\nitems:\n  - 7\n  - { name: a, colour: red }\n  - [x]\n  - { name: b, size: big, shape: round }\nextra: 1\n";
        let doc = parse(text).unwrap();
        assert_eq!(
            shown(&doc),
            [
                "line 1: n: invalid type: string \"many\", expected u32",
                "line 3: items.0: invalid type: integer `7`, expected struct Item",
                "line 4: items.1.colour: unknown key `colour`",
                "line 5: items.2: invalid type: sequence, expected struct Item",
                "line 6: items.3.size: invalid type: string \"big\", expected u32",
                "line 6: items.3.shape: unknown key `shape`",
                "line 7: extra: unknown key `extra`",
            ]
        );
        // What survived is read; what was refused took its default.
        assert_eq!(doc.value.n, 0);
        let names: Vec<_> = doc.value.items.iter().map(|i| (i.name.as_str(), i.size)).collect();
        assert_eq!(names, [("a", 0), ("b", 0)]);
        assert!(doc.is_rejected("items.3.size") && doc.is_rejected("items.0") && !doc.is_rejected("items.1"));
    }

    #[test]
    fn nested_sequences_keep_their_indices_apart() {
        let text = "nested:\n  - [1, x, 3]\n  - y\n  - [z, 5, w]\n";
        let doc = parse(text).unwrap();
        let paths: Vec<_> = doc.problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            paths,
            [("nested.0.1", Some(2)), ("nested.1", Some(3)), ("nested.2.0", Some(4)), ("nested.2.2", Some(4))]
        );
        assert_eq!(doc.value.nested, vec![vec![1, 3], vec![5]]);
    }

    #[test]
    fn unknown_keys_inside_options_have_plain_paths() {
        let doc = parse("opt:\n  name: a\n  sise: 3\n").unwrap();
        assert_eq!(shown(&doc), ["line 3: opt.sise: unknown key `sise`"]);
    }

    #[test]
    fn a_document_of_the_wrong_type_is_one_problem() {
        let doc = parse("[1, 2]\n").unwrap();
        assert_eq!(doc.problems.len(), 1);
        assert!(doc.problems[0].message.contains("expected struct Doc"), "{:?}", doc.problems);
        // All of it is a default now: no semantic check may judge it.
        assert!(doc.is_rejected("n") && doc.is_rejected(""));
        assert!(parse("- [unclosed\n").err().unwrap().problems[0].message.contains("not valid YAML"));
    }

    #[test]
    fn a_refused_value_from_a_variable_is_shown_as_written() {
        let doc = parse("n: ${SECRET}\n").unwrap();
        let text = shown(&doc).join("\n");
        assert!(text.contains("\"${SECRET}\"") && !text.contains("sk-very"), "{text}");
    }

    #[test]
    fn listing_stops_after_a_bound() {
        let items: String = (0..MAX_TYPE_ERRORS + 5).map(|_| "  - 1\n").collect();
        let e = parse(&format!("items:\n{items}")).err().unwrap();
        assert_eq!(e.problems.len(), MAX_TYPE_ERRORS + 1);
        assert!(e.to_string().contains("stopped listing"), "{e}");
        assert_eq!(e.problems[MAX_TYPE_ERRORS - 1].path, format!("items.{}", MAX_TYPE_ERRORS - 1));
    }
}
