//! Where each key of a YAML document sits, so that every config problem can
//! name its line. serde works on the parsed tree and forgets positions; this
//! walks the parser's events once and records `path → line`.
//!
//! Paths are dotted, with sequence items as numbers: `providers.groq.keys.1`.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver};

/// Line numbers (1-based) of every mapping key and sequence item.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    lines: HashMap<String, usize>,
}

impl SourceMap {
    /// Indexes `text`. A document that does not parse gives an empty map;
    /// the YAML error itself is reported by the deserializer.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self { lines: builder.lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            p = &p[..p.rfind('.')?];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_owned() } else { format!("{parent}.{child}") }
}

impl Builder {
    /// Called for every node. Returns the node's path when it is a value (not
    /// a mapping key), and advances the parent's state.
    fn node(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // This node is a key. Complex (non-scalar) keys get a placeholder.
                    let name = scalar.unwrap_or("?").to_owned();
                    self.lines.insert(join(path, &name), line);
                    *key = Some(name);
                    None
                }
                Some(k) => Some(join(path, &k)),
            },
            Some(Frame::Seq { path, index }) => {
                let p = join(path, &index.to_string());
                *index += 1;
                self.lines.insert(p.clone(), line);
                Some(p)
            }
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let line = span.start.line();
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), line);
            }
            Event::Alias(_) => {
                self.node(None, line);
            }
            Event::MappingStart(..) => {
                let path = self.node(None, line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_and_items_with_their_lines() {
        let text = "server:\n  listen: x\nproviders:\n  groq:\n    keys:\n      - a\n      - b\n    models: [m1, m2]\n";
        let map = SourceMap::new(text);
        assert_eq!(map.line("server"), Some(1));
        assert_eq!(map.line("server.listen"), Some(2));
        assert_eq!(map.line("providers.groq"), Some(4));
        assert_eq!(map.line("providers.groq.keys.0"), Some(6));
        assert_eq!(map.line("providers.groq.keys.1"), Some(7));
        assert_eq!(map.line("providers.groq.models.1"), Some(8));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(map.line("providers.groq.keys.1.deeper"), Some(7));
        assert_eq!(map.line("nothing"), None);
    }
}
