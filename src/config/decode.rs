//! Generic pieces of the walk from the spanned tree to typed values.
//!
//! A decoder is a function `(cx, node, path) -> Option<T>`: on a bad value it records an
//! error in [`Cx`] and returns `None`, and the caller carries on, so that one walk finds
//! every error of a file. [`Fields`] is an object whose keys have been checked against the
//! known ones; its getters say what to do when a key is absent (required, default, unset).
//! Every key and array element seen is remembered in [`Cx::spans`] so that the whole-config
//! checks run later on typed values can still point at the offending key.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::error::ConfigError;
use super::json5::{Member, Node, Pos, Value, join_index, join_key, show_path};

/// The state of one walk: where errors go and where every key was.
#[derive(Debug)]
pub(crate) struct Cx {
    pub file: String,
    pub errors: Vec<ConfigError>,
    /// Key path -> position of the key (of the element, for array items).
    pub spans: BTreeMap<String, Pos>,
}

impl Cx {
    pub fn new(file: &str) -> Self {
        Cx { file: file.to_string(), errors: Vec::new(), spans: BTreeMap::new() }
    }

    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            path: show_path(path).to_string(),
            message: message.into(),
        });
    }

    /// An error about a key found earlier; positioned at that key, or at its nearest
    /// ancestor present in the file when the value came from a default.
    pub fn error_at(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.span_of(path);
        self.error(pos, path, message);
    }

    /// Whether no error was reported at `path` or below it: the relation rules only read
    /// values that decoded, never the defaults that stand in for bad ones.
    pub fn clean(&self, path: &str) -> bool {
        !self.errors.iter().any(|e| {
            e.path.strip_prefix(path).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    fn span_of(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => {
                    let root = self.spans.get("").copied();
                    return root.unwrap_or(Pos { line: 1, column: 1 });
                }
            }
        }
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let found = node.value.describe();
        self.error(node.pos, path, format!("expected {what}, found {found}"));
    }
}

/// The members of an object, keyed by name, after unknown and duplicate keys were reported.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    pub path: String,
    pub pos: Pos,
    map: BTreeMap<&'a str, &'a Member>,
}

/// Checks that `node` is an object with only `known` keys, each at most once.
pub(crate) fn object<'a>(cx: &mut Cx, node: &'a Node, path: &str, known: &[&str]) -> Option<Fields<'a>> {
    let Value::Object(members) = &node.value else {
        cx.expected(node, path, "an object");
        return None;
    };
    let mut map: BTreeMap<&str, &Member> = BTreeMap::new();
    for m in members {
        let child = join_key(path, &m.key);
        if !known.contains(&m.key.as_str()) {
            cx.error(m.key_pos, &child, unknown_key(&m.key, known));
        } else if let Some(first) = map.get(m.key.as_str()) {
            let at = first.key_pos;
            let msg = format!("duplicate key (first at {}:{})", at.line, at.column);
            cx.error(m.key_pos, &child, msg);
        } else {
            cx.spans.insert(child, m.key_pos);
            map.insert(&m.key, m);
        }
    }
    Some(Fields { path: path.to_string(), pos: node.pos, map })
}

fn unknown_key(key: &str, known: &[&str]) -> String {
    let close = known.iter().filter(|k| edit_distance(key, k) <= 2).min_by_key(|k| edit_distance(key, k));
    let hint = match close {
        Some(k) => format!("did you mean `{k}`? "),
        None => String::new(),
    };
    format!("unknown key; {hint}expected one of: {}", known.join(", "))
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl<'a> Fields<'a> {
    pub fn child(&self, key: &str) -> String {
        join_key(&self.path, key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn node(&self, key: &str) -> Option<&'a Node> {
        self.map.get(key).map(|m| &m.value)
    }

    /// A key that must be present.
    pub fn req<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        f: impl FnOnce(&mut Cx, &'a Node, &str) -> Option<T>,
    ) -> Option<T> {
        let path = self.child(key);
        match self.node(key) {
            Some(n) => f(cx, n, &path),
            None => {
                cx.error(self.pos, &path, "missing required key");
                None
            }
        }
    }

    /// A key with a default. A bad value is reported and the default stands in for it, so
    /// that the relation rules still run on the rest of the object (no `Config` comes out
    /// of a walk with errors, so a stand-in never reaches the program).
    pub fn or<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        default: T,
        f: impl FnOnce(&mut Cx, &'a Node, &str) -> Option<T>,
    ) -> T {
        match self.node(key) {
            Some(n) => f(cx, n, &self.child(key)).unwrap_or(default),
            None => default,
        }
    }

    /// A required key that no relation rule reads: after a missing or bad value has been
    /// reported, `stand_in` replaces it so that the rest of the object is still checked.
    pub fn req_or<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        stand_in: T,
        f: impl FnOnce(&mut Cx, &'a Node, &str) -> Option<T>,
    ) -> T {
        self.req(cx, key, f).unwrap_or(stand_in)
    }

    /// A key that may be unset (absent or `null`): `Some(None)` then, `None` on error.
    pub fn maybe<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        f: impl FnOnce(&mut Cx, &'a Node, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.node(key) {
            None => Some(None),
            Some(n) if n.value == Value::Null => Some(None),
            Some(n) => f(cx, n, &self.child(key)).map(Some),
        }
    }
}

/// The items of an array with `min..=max` elements, each with its path.
pub(crate) fn items<'a>(
    cx: &mut Cx,
    node: &'a Node,
    path: &str,
    (min, max): (usize, usize),
    noun: &str,
) -> Option<Vec<(String, &'a Node)>> {
    let Value::Array(items) = &node.value else {
        cx.expected(node, path, &format!("an array of {noun}"));
        return None;
    };
    if items.len() < min {
        let msg = match min {
            1 => format!("expected a non-empty array of {noun}"),
            _ => format!("expected at least {min} {noun}, found {}", items.len()),
        };
        cx.error(node.pos, path, msg);
    } else if items.len() > max {
        let msg = format!("expected at most {max} {noun}, found {}", items.len());
        cx.error(node.pos, path, msg);
    }
    let out = items.iter().enumerate().map(|(i, n)| {
        let p = join_index(path, i);
        cx.spans.insert(p.clone(), n.pos);
        (p, n)
    });
    Some(out.collect())
}

/// An array whose elements all decode with `f`; `None` if any does not.
pub(crate) fn list<'a, T>(
    bounds: (usize, usize),
    noun: &'static str,
    f: impl Fn(&mut Cx, &'a Node, &str) -> Option<T>,
) -> impl Fn(&mut Cx, &'a Node, &str) -> Option<Vec<T>> {
    move |cx: &mut Cx, node: &'a Node, path: &str| {
        let items = items(cx, node, path, bounds, noun)?;
        let decoded: Vec<Option<T>> = items.iter().map(|(p, n)| f(cx, n, p)).collect();
        decoded.into_iter().collect()
    }
}

pub(crate) fn boolean(cx: &mut Cx, node: &Node, path: &str) -> Option<bool> {
    match node.value {
        Value::Bool(b) => Some(b),
        _ => {
            cx.expected(node, path, "true or false");
            None
        }
    }
}

pub(crate) fn string(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => {
            cx.expected(node, path, "a non-empty string");
            None
        }
    }
}

/// An integer in `lo..=hi`, converted to the field's type.
pub(crate) fn int<T: TryFrom<i128>>(lo: i128, hi: i128) -> impl Fn(&mut Cx, &Node, &str) -> Option<T> {
    move |cx: &mut Cx, node: &Node, path: &str| {
        let what = format!("an integer in {lo}..={hi}");
        match node.value {
            Value::Int(i) if (lo..=hi).contains(&i) => T::try_from(i).ok(),
            _ => {
                cx.expected(node, path, &what);
                None
            }
        }
    }
}

/// A TCP/UDP port.
pub(crate) fn port(cx: &mut Cx, node: &Node, path: &str) -> Option<u16> {
    int(1, 65_535)(cx, node, path)
}

/// A string that must be one of `table`'s names.
pub(crate) fn one_of<'a, T: Copy>(
    table: &'a [(&'a str, T)],
) -> impl Fn(&mut Cx, &Node, &str) -> Option<T> + 'a {
    move |cx: &mut Cx, node: &Node, path: &str| {
        if let Value::String(s) = &node.value {
            if let Some((_, v)) = table.iter().find(|(name, _)| name == s) {
                return Some(*v);
            }
        }
        let names: Vec<String> = table.iter().map(|(n, _)| format!("{n:?}")).collect();
        cx.expected(node, path, &format!("one of {}", names.join(", ")));
        None
    }
}

/// An IPv4 or IPv6 address that can be a host's address (not unspecified or multicast).
pub(crate) fn host_ip(cx: &mut Cx, node: &Node, path: &str) -> Option<IpAddr> {
    let Value::String(s) = &node.value else {
        cx.expected(node, path, "an IP address string");
        return None;
    };
    match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
            let msg = format!("expected a host address, found {ip} (unspecified or multicast)");
            cx.error(node.pos, path, msg);
            None
        }
        Ok(ip) => Some(ip),
        Err(_) => {
            cx.expected(node, path, "an IPv4 or IPv6 address");
            None
        }
    }
}

/// A network in CIDR notation, without host bits; a bare address means that one host.
pub(crate) fn cidr(cx: &mut Cx, node: &Node, path: &str) -> Option<IpNet> {
    let Value::String(s) = &node.value else {
        cx.expected(node, path, "a CIDR string such as \"10.0.0.0/24\"");
        return None;
    };
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                cx.expected(node, path, "a CIDR such as \"10.0.0.0/24\" or an IP address");
                return None;
            }
        },
    };
    if net.trunc() != net {
        let msg = format!("{net} has host bits set; did you mean {}?", net.trunc());
        cx.error(node.pos, path, msg);
        return None;
    }
    Some(net)
}

/// A name used on the command line and in metrics: 1..=63 of `[A-Za-z0-9._-]`.
pub(crate) fn name(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.len() > 63 || !s.chars().all(ok_char) {
        let msg = format!("expected a name of 1 to 63 letters, digits, '.', '_' or '-', found {s:?}");
        cx.error(node.pos, path, msg);
        return None;
    }
    Some(s)
}

/// A file name; relative names are taken from the config file's directory later.
pub(crate) fn file_path(cx: &mut Cx, node: &Node, path: &str) -> Option<std::path::PathBuf> {
    let s = string(cx, node, path)?;
    if s.contains('\0') {
        cx.error(node.pos, path, "expected a file name, found a string with a NUL character");
        return None;
    }
    Some(std::path::PathBuf::from(s))
}

/// Reports values that occur more than once among `items` (path of the item, value),
/// at the later occurrences.
pub(crate) fn unique<T: Ord + std::fmt::Display>(
    cx: &mut Cx,
    items: impl IntoIterator<Item = (String, T)>,
    what: &str,
) {
    let mut seen: BTreeMap<T, String> = BTreeMap::new();
    for (path, value) in items {
        match seen.get(&value) {
            Some(first) => {
                let msg = format!("duplicate {what} {value} (also at {first})");
                cx.error_at(&path, msg);
            }
            None => {
                seen.insert(value, path);
            }
        }
    }
}
