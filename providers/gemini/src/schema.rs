//! JSON Schema (as OpenAI clients write it) → the OpenAPI-style schema subset
//! Gemini accepts in `functionDeclarations[].parameters` and
//! `generationConfig.responseSchema`.
//!
//! Gemini refuses unknown keywords (`$schema`, `additionalProperties`,
//! `strict`, `$defs`...), union types written as `type: [..]`, `const`, and
//! `format`s other than a few per type. This keeps what it knows, rewrites
//! what has an equivalent and drops the rest.

use serde_json::{Map, Value};

/// Keywords Gemini's `Schema` knows, copied as they are.
const KEPT: &[&str] = &[
    "title",
    "description",
    "nullable",
    "maxItems",
    "minItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "default",
    "minimum",
    "maximum",
    "propertyOrdering",
];

/// `$ref` chains and nesting deeper than this are cut off (a recursive
/// schema would otherwise never end).
const MAX_DEPTH: usize = 24;

/// A client's JSON schema in Gemini's dialect.
pub fn sanitize(schema: &Value) -> Value {
    clean(schema, schema, 0)
}

/// Function parameters: `None` when the function takes none (Gemini
/// refuses an object schema with no properties).
pub fn parameters(schema: Option<&Value>) -> Option<Value> {
    let schema = schema?;
    if schema.is_null() {
        return None;
    }
    let cleaned = sanitize(schema);
    let is_object = cleaned.get("type").and_then(Value::as_str).is_none_or(|t| t.eq_ignore_ascii_case("object"));
    let has_properties = cleaned.get("properties").and_then(Value::as_object).is_some_and(|p| !p.is_empty());
    if is_object && !has_properties && cleaned.get("anyOf").is_none() {
        return None;
    }
    Some(cleaned)
}

fn clean(node: &Value, root: &Value, depth: usize) -> Value {
    let Value::Object(map) = node else {
        // `true` (anything) and other shorthand: no constraint.
        return Value::Object(Map::new());
    };
    if depth > MAX_DEPTH {
        return Value::Object(Map::new());
    }
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let mut merged = resolve(root, reference).and_then(Value::as_object).cloned().unwrap_or_default();
        for (k, v) in map {
            if k != "$ref" {
                merged.insert(k.clone(), v.clone());
            }
        }
        return clean(&Value::Object(merged), root, depth + 1);
    }
    let mut out = Map::new();
    for key in KEPT {
        if let Some(v) = map.get(*key).filter(|v| !v.is_null()) {
            out.insert((*key).to_owned(), v.clone());
        }
    }
    match map.get("type") {
        Some(Value::String(t)) if t != "null" => {
            out.insert("type".to_owned(), Value::String(t.clone()));
        }
        Some(Value::String(_)) => {
            out.insert("nullable".to_owned(), Value::Bool(true));
        }
        Some(Value::Array(types)) => {
            let named: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            if named.len() < types.len() {
                out.insert("nullable".to_owned(), Value::Bool(true));
            }
            match named.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".to_owned(), Value::String((*one).to_owned()));
                }
                many => {
                    let alternatives = many.iter().map(|t| {
                        let mut alt = Map::new();
                        alt.insert("type".to_owned(), Value::String((*t).to_owned()));
                        Value::Object(alt)
                    });
                    out.insert("anyOf".to_owned(), Value::Array(alternatives.collect()));
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Object(properties)) = map.get("properties") {
        let cleaned: Map<String, Value> =
            properties.iter().map(|(name, schema)| (name.clone(), clean(schema, root, depth + 1))).collect();
        if !cleaned.is_empty() {
            out.insert("properties".to_owned(), Value::Object(cleaned));
        }
    }
    if let Some(Value::Array(required)) = map.get("required") {
        let known = out.get("properties").and_then(Value::as_object);
        let names: Vec<Value> = required
            .iter()
            .filter(|n| n.as_str().is_some_and(|n| known.is_some_and(|p| p.contains_key(n))))
            .cloned()
            .collect();
        if !names.is_empty() {
            out.insert("required".to_owned(), Value::Array(names));
        }
    }
    match map.get("items") {
        Some(Value::Array(tuple)) => {
            if let Some(first) = tuple.first() {
                out.insert("items".to_owned(), clean(first, root, depth + 1));
            }
        }
        Some(items @ Value::Object(_)) => {
            out.insert("items".to_owned(), clean(items, root, depth + 1));
        }
        _ => {}
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        let strings: Option<Vec<Value>> =
            values.iter().filter(|v| !v.is_null()).map(|v| v.as_str().map(|s| Value::String(s.to_owned()))).collect();
        if let Some(strings) = strings.filter(|s| !s.is_empty()) {
            out.insert("enum".to_owned(), Value::Array(strings));
            out.entry("type").or_insert_with(|| Value::String("string".to_owned()));
        }
    }
    if let Some(Value::String(constant)) = map.get("const") {
        out.insert("enum".to_owned(), Value::Array(vec![Value::String(constant.clone())]));
        out.entry("type").or_insert_with(|| Value::String("string".to_owned()));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alternatives)) = map.get(key) {
            union(&mut out, alternatives, root, depth);
        }
    }
    if let Some(Value::Array(all)) = map.get("allOf") {
        for part in all {
            merge(&mut out, clean(part, root, depth + 1));
        }
    }
    if let Some(Value::String(format)) = map.get("format") {
        let ty = out.get("type").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let allowed = match ty.as_deref() {
            Some("string") => ["enum", "date-time"].contains(&format.as_str()),
            Some("integer") => ["int32", "int64"].contains(&format.as_str()),
            Some("number") => ["float", "double"].contains(&format.as_str()),
            _ => false,
        };
        if allowed {
            out.insert("format".to_owned(), Value::String(format.clone()));
        }
    }
    Value::Object(out)
}

/// `anyOf`/`oneOf`: null alternatives become `nullable`; a single remaining
/// alternative is merged in place.
fn union(out: &mut Map<String, Value>, alternatives: &[Value], root: &Value, depth: usize) {
    let mut kept = Vec::new();
    for alt in alternatives {
        if alt.get("type").and_then(Value::as_str) == Some("null") {
            out.insert("nullable".to_owned(), Value::Bool(true));
            continue;
        }
        kept.push(clean(alt, root, depth + 1));
    }
    match kept.len() {
        0 => {}
        1 => merge(out, kept.remove(0)),
        _ => {
            out.insert("anyOf".to_owned(), Value::Array(kept));
        }
    }
}

/// Merges `extra` into `out`: properties and required names are joined,
/// other keys are added where `out` has none.
fn merge(out: &mut Map<String, Value>, extra: Value) {
    let Value::Object(extra) = extra else { return };
    for (k, v) in extra {
        match (k.as_str(), out.get_mut(&k)) {
            ("properties", Some(Value::Object(mine))) => {
                if let Value::Object(theirs) = v {
                    mine.extend(theirs);
                }
            }
            ("required", Some(Value::Array(mine))) => {
                if let Value::Array(theirs) = v {
                    for name in theirs {
                        if !mine.contains(&name) {
                            mine.push(name);
                        }
                    }
                }
            }
            (_, Some(_)) => {}
            (_, None) => {
                out.insert(k, v);
            }
        }
    }
}

/// A local `$ref` (`#/$defs/X`, `#/definitions/X`, any JSON pointer).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}
