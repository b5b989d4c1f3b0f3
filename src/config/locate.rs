//! Where each key and list item of a YAML document starts, by path.
//!
//! serde_norway parses the document but its values carry no positions, so a second, cheap pass
//! over the parser events of yaml-rust2 records the position of every mapping key and sequence
//! item under a path such as `sources.probe.targets[2].url`. Diagnostics look paths up here.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::diagnostic::Location;

/// Positions by path. Lookups fall back to the nearest enclosing path that is known.
#[derive(Debug, Default)]
pub struct Locations {
    by_path: HashMap<String, Location>,
}

impl Locations {
    /// Indexes `text`. A document that does not parse yields an empty index (serde_norway
    /// reports the syntax error itself, with its position).
    pub fn index(text: &str) -> Self {
        let mut indexer = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut indexer, false).is_err() {
            return Self::default();
        }
        Self {
            by_path: indexer.by_path,
        }
    }

    /// The position of `path`, or of its nearest known ancestor.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.by_path.get(path) {
                return Some(*location);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// Appends a mapping key to a path.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Appends a sequence index to a path.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

enum Frame {
    Mapping {
        path: String,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<String>,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    by_path: HashMap<String, Location>,
}

impl Indexer {
    fn location(mark: Marker) -> Location {
        Location {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }

    /// Called at the start of a node in value position: returns the node's path and records it.
    fn enter_value(&mut self, mark: Marker) -> Option<String> {
        let location = Self::location(mark);
        match self.stack.last_mut() {
            None => Some(String::new()),
            // The key was recorded when it was read; the value's path is the key's. A node in
            // key position (`key` is `None`) is a complex key: those are not indexed.
            Some(Frame::Mapping { path, key }) => key.take().map(|key| join_key(path, &key)),
            Some(Frame::Sequence { path, next }) => {
                let item = join_index(path, *next);
                *next += 1;
                self.by_path.entry(item.clone()).or_insert(location);
                Some(item)
            }
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                let location = Self::location(mark);
                if let Some(Frame::Mapping {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    self.by_path
                        .entry(join_key(path, &value))
                        .or_insert(location);
                    *key = Some(value);
                } else {
                    self.enter_value(mark);
                }
            }
            Event::Alias(_) => {
                self.enter_value(mark);
            }
            Event::MappingStart(..) => {
                // A complex (non-scalar) key gets a path no lookup will ask for.
                let path = self.enter_value(mark).unwrap_or_else(|| "?".to_owned());
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(mark).unwrap_or_else(|| "?".to_owned());
                self.stack.push(Frame::Sequence { path, next: 0 });
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

    const DOC: &str = "\
sources:
  gen:
    type: generate
    fields: { a: 1 }
sinks:
  out:
    type: console
    inputs: [gen, other]
    list:
      - url: x
      - url: y
";

    #[test]
    fn finds_keys_items_and_nearest_ancestors() {
        let at = Locations::index(DOC);
        let loc = |line, column| Some(Location { line, column });
        assert_eq!(at.find("sources"), loc(1, 1));
        assert_eq!(at.find("sources.gen.type"), loc(3, 5));
        assert_eq!(at.find("sources.gen.fields.a"), loc(4, 15));
        assert_eq!(at.find("sinks.out.inputs[1]"), loc(8, 19));
        assert_eq!(at.find("sinks.out.list[1].url"), loc(11, 9));
        assert_eq!(at.find("sinks.out.nothing.here"), loc(6, 3));
        assert_eq!(at.find("nowhere"), None);
    }
}
