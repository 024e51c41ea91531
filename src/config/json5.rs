//! A small JSON5 parser that keeps the line and column of every key and value.
//!
//! Why our own: config errors must point at the offending key (`FILE:LINE:COL`), and the
//! `json5` crate's serde interface forgets positions once a value is deserialised. The
//! grammar is small (<https://spec.json5.org>): comments, trailing commas, unquoted
//! (identifier) keys, single-quoted strings, escapes and line continuations, hex numbers,
//! leading/trailing decimal points, explicit `+`, `Infinity` and `NaN`. Not supported:
//! `\uXXXX` escapes inside unquoted keys (quote such a key instead).
//!
//! Contract: [`parse`] never panics and never recurses deeper than [`MAX_DEPTH`] (a fuzzed
//! file cannot overflow the stack). It stops at the first syntax error: past one, positions
//! of what follows mean little. Duplicate keys are kept in the tree (the decoder reports
//! them, since JSON5's "last one wins" would silently hide an operator's mistake). Integers
//! without fraction or exponent are kept exactly as [`Value::Int`]; other numbers are `f64`.
//! Columns count characters, not bytes. The scenario files of `sim/` may reuse it.

/// A 1-based position in the text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    String(String),
    Array(Vec<Node>),
    /// Members in file order, duplicates included.
    Object(Vec<Member>),
}

/// One `key: value` of an object.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// The first syntax error of a document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {path}: {message}", pos.line, pos.column)]
pub struct SyntaxError {
    pub pos: Pos,
    /// Key path of the value being parsed when the error was found (`(root)` at top level).
    pub path: String,
    pub message: String,
}

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// Parses a whole JSON5 document.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut p = Parser { src: text, i: 0, pos: Pos { line: 1, column: 1 }, path: String::new() };
    p.skip_blank()?;
    let node = p.value(0)?;
    p.skip_blank()?;
    match p.peek() {
        None => Ok(node),
        Some(c) => Err(p.error(format!("expected the end of the document, found {}", show(Some(c))))),
    }
}

impl Value {
    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => format!("number {i}"),
            Value::Float(f) => format!("number {f}"),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(_) => "an array".to_string(),
            Value::Object(_) => "an object".to_string(),
        }
    }
}

/// Appends `.key` to a key path (just `key` at the root).
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Appends `[index]` to a key path.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// A path for messages: the root is `(root)`.
pub fn show_path(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

fn show(c: Option<char>) -> String {
    match c {
        None => "the end of the file".to_string(),
        Some(c) if c.is_control() || c.is_whitespace() => format!("{:?}", c),
        Some(c) => format!("'{c}'"),
    }
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c == '$' || c.is_alphabetic()
}

fn is_ident_part(c: char) -> bool {
    is_ident_start(c) || c.is_alphanumeric() || c == '\u{200C}' || c == '\u{200D}'
}

struct Parser<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    i: usize,
    /// Position of the next character.
    pos: Pos,
    /// Key path of the value being parsed.
    path: String,
}

type Res<T> = Result<T, SyntaxError>;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.i..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.src[self.i..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        let crlf = c == '\r' && self.peek() == Some('\n');
        if is_line_break(c) && !crlf {
            self.pos.line = self.pos.line.saturating_add(1);
            self.pos.column = 1;
        } else if !crlf {
            self.pos.column = self.pos.column.saturating_add(1);
        }
        Some(c)
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError { pos, path: show_path(&self.path).to_string(), message: message.into() }
    }

    /// Skips white space and comments.
    fn skip_blank(&mut self) -> Res<()> {
        loop {
            match (self.peek(), self.peek2()) {
                (Some(c), _) if c.is_whitespace() || c == '\u{FEFF}' => {
                    self.bump();
                }
                (Some('/'), Some('/')) => {
                    while self.peek().is_some_and(|c| !is_line_break(c)) {
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => self.block_comment()?,
                _ => return Ok(()),
            }
        }
    }

    fn block_comment(&mut self) -> Res<()> {
        let start = self.pos;
        self.bump();
        self.bump();
        loop {
            match self.bump() {
                None => return Err(self.error_at(start, "unterminated block comment")),
                Some('*') if self.peek() == Some('/') => {
                    self.bump();
                    return Ok(());
                }
                Some(_) => {}
            }
        }
    }

    fn value(&mut self, depth: usize) -> Res<Node> {
        let pos = self.pos;
        let value = match self.peek() {
            Some('{') | Some('[') if depth >= MAX_DEPTH => {
                return Err(self.error(format!("nesting deeper than {MAX_DEPTH} levels")));
            }
            Some('{') => self.object(depth)?,
            Some('[') => self.array(depth)?,
            Some(q @ ('"' | '\'')) => Value::String(self.string(q)?),
            Some(c) if c.is_ascii_digit() || matches!(c, '-' | '+' | '.') => self.number()?,
            Some(c) if is_ident_start(c) => self.word()?,
            c => return Err(self.error(format!("expected a value, found {}", show(c)))),
        };
        Ok(Node { pos, value })
    }

    fn word(&mut self) -> Res<Value> {
        let start = self.pos;
        let ident = self.identifier();
        match ident.as_str() {
            "null" => Ok(Value::Null),
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "Infinity" => Ok(Value::Float(f64::INFINITY)),
            "NaN" => Ok(Value::Float(f64::NAN)),
            _ => {
                Err(self.error_at(start, format!("expected a value, found `{ident}` (strings need quotes)")))
            }
        }
    }

    fn identifier(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek().filter(|&c| is_ident_part(c)) {
            s.push(c);
            self.bump();
        }
        s
    }

    fn object(&mut self, depth: usize) -> Res<Value> {
        self.bump();
        let mut members = Vec::new();
        loop {
            self.skip_blank()?;
            if self.peek() == Some('}') {
                self.bump();
                return Ok(Value::Object(members));
            }
            let key_pos = self.pos;
            let key = match self.peek() {
                Some(q @ ('"' | '\'')) => self.string(q)?,
                Some(c) if is_ident_start(c) => self.identifier(),
                c => return Err(self.error(format!("expected a key or '}}', found {}", show(c)))),
            };
            self.skip_blank()?;
            if self.peek() != Some(':') {
                let found = show(self.peek());
                return Err(self.error(format!("expected ':' after key `{key}`, found {found}")));
            }
            self.bump();
            self.skip_blank()?;
            let saved = self.path.len();
            self.path = join_key(&self.path, &key);
            let value = self.value(depth + 1)?;
            self.path.truncate(saved);
            members.push(Member { key, key_pos, value });
            if !self.separator('}')? {
                self.bump();
                return Ok(Value::Object(members));
            }
        }
    }

    fn array(&mut self, depth: usize) -> Res<Value> {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_blank()?;
            if self.peek() == Some(']') {
                self.bump();
                return Ok(Value::Array(items));
            }
            let saved = self.path.len();
            self.path = join_index(&self.path, items.len());
            let item = self.value(depth + 1)?;
            self.path.truncate(saved);
            items.push(item);
            if !self.separator(']')? {
                self.bump();
                return Ok(Value::Array(items));
            }
        }
    }

    /// After a member or item: `Ok(true)` on a comma (consumed), `Ok(false)` before `close`.
    fn separator(&mut self, close: char) -> Res<bool> {
        self.skip_blank()?;
        match self.peek() {
            Some(',') => {
                self.bump();
                Ok(true)
            }
            Some(c) if c == close => Ok(false),
            c => Err(self.error(format!("expected ',' or '{close}', found {}", show(c)))),
        }
    }
}

mod lex;

#[cfg(test)]
mod tests;
