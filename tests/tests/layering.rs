//! The agent's modules depend on each other one way.
//!
//! Every `crate::`, `super::` and `self::` path in `agent/src` (tests excluded) is resolved to
//! the module it names. At every level of the module tree the modules side by side (the children
//! of one folder) must then form a directed acyclic graph: a file may use its own folder's items
//! (`super::Segment`) and its children, but two siblings never use each other, directly or
//! round a longer loop. The test names the files behind every edge of a cycle it finds.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

type ModPath = Vec<String>;

fn agent_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src")
}

/// Every production source file of the library and its module path.
fn modules(root: &Path) -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, prefix: &ModPath, out: &mut BTreeMap<ModPath, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 names")
                .to_owned();
            if path.is_dir() {
                if name == "tests" {
                    continue;
                }
                let mut p = prefix.clone();
                p.push(name);
                walk(&path, &p, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if matches!(stem, "tests" | "testutil" | "main") {
                    continue;
                }
                let mut p = prefix.clone();
                if !matches!(stem, "mod" | "lib") {
                    p.push(stem.to_owned());
                }
                out.insert(p, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &Vec::new(), &mut out);
    out
}

/// The source without comments, string and char literals, and `#[cfg(test)]` items.
fn production_code(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(b.len(), |n| i + n);
        } else if src[i..].starts_with("/*") {
            i = src[i + 2..].find("*/").map_or(b.len(), |n| i + n + 4);
        } else if src[i..].starts_with("r#\"") || src[i..].starts_with("r\"") {
            let hashes = src[i + 1..].bytes().take_while(|c| *c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            i = src[body..]
                .find(&close)
                .map_or(b.len(), |n| body + n + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\''
            && (src[i..].starts_with("'\\") || src.get(i + 2..i + 3) == Some("'"))
        {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime.
            i = src[i + 1..]
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == '\'')
                .map_or(b.len(), |(n, _)| i + 1 + n + 1);
            out.push_str("' '");
        } else {
            let c = src[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    strip_test_items(&out)
}

/// Removes every item under `#[cfg(test)]` (a `mod tests { .. }`, a `mod tests;`, a function).
fn strip_test_items(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at the `;` or the brace matching its first `{`, whichever comes first.
        let semi = after.find(';');
        let brace = after.find('{');
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (n, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + n + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the path (or `use` tree) starting at `src[at..]` into full paths, relative to how it
/// starts (`crate`, `super`, `self`).
fn expand(src: &str, at: usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b = src.as_bytes();
    let mut i = at;
    let depth = prefix.len();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                i = expand(src, i, prefix, out);
            }
            break;
        }
        let start = i;
        while i < b.len() && is_ident(b[i] as char) {
            i += 1;
        }
        if start == i {
            out.push(prefix.clone());
            break;
        }
        prefix.push(src[start..i].to_owned());
        let rest = &src[i..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with("::") {
            i += rest.len() - trimmed.len() + 2;
        } else {
            out.push(prefix.clone());
            break;
        }
    }
    prefix.truncate(depth);
    i
}

/// Modules this module's code names, resolved against the known modules.
fn references(module: &ModPath, code: &str, known: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let mut found = BTreeSet::new();
    let b = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(n) = code[from..].find(start) {
            let at = from + n;
            from = at + start.len();
            if at > 0 && (is_ident(b[at - 1] as char) || b[at - 1] == b':') {
                continue;
            }
            let mut paths = Vec::new();
            expand(code, at, &mut Vec::new(), &mut paths);
            for path in paths {
                // A folder's mod.rs is the folder's module, so `super` is the same step for both.
                let mut base: ModPath = module.clone();
                let mut segs = path.iter().peekable();
                if segs.peek().is_some_and(|s| *s == "crate") {
                    base.clear();
                    segs.next();
                }
                while let Some(s) = segs.peek() {
                    match s.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    segs.next();
                }
                let mut full = base;
                let mut best = None;
                if known.contains(&full) {
                    best = Some(full.clone());
                }
                for s in segs {
                    full.push(s.clone());
                    if known.contains(&full) {
                        best = Some(full.clone());
                    }
                }
                if let Some(m) = best {
                    found.insert(m);
                }
            }
        }
    }
    found
}

fn is_prefix(a: &ModPath, b: &ModPath) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..]
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// Cycles among siblings, each as a list of "a -> b (files)" steps.
fn cycles(root: &Path) -> Vec<String> {
    let files = modules(root);
    let known: BTreeSet<ModPath> = files.keys().cloned().collect();
    // (parent, from child, to child) -> the files behind the edge.
    let mut edges: BTreeMap<(ModPath, String, String), BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        let src = std::fs::read_to_string(path).expect("readable source");
        for target in references(module, &production_code(&src), &known) {
            if is_prefix(&target, module) || is_prefix(module, &target) {
                continue;
            }
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let parent = module[..common].to_vec();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string();
            edges
                .entry((parent, module[common].clone(), target[common].clone()))
                .or_default()
                .insert(format!("{rel} uses {}", name(&target)));
        }
    }
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, from, to) in edges.keys() {
        by_parent
            .entry(parent.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    let mut found = Vec::new();
    for (parent, graph) in &by_parent {
        // Depth-first search for a back edge; each cycle reported once by its smallest node.
        let mut seen_cycles = BTreeSet::new();
        for start in graph.keys() {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            while let Some((node, trail)) = stack.pop() {
                for next in graph.get(&node).into_iter().flatten() {
                    if next == start {
                        let mut key = trail.clone();
                        key.sort();
                        if seen_cycles.insert(key) {
                            let mut steps = Vec::new();
                            let mut ring = trail.clone();
                            ring.push(start.clone());
                            for w in ring.windows(2) {
                                let why = &edges[&(parent.clone(), w[0].clone(), w[1].clone())];
                                steps.push(format!(
                                    "  {} -> {}: {}",
                                    w[0],
                                    w[1],
                                    why.iter().cloned().collect::<Vec<_>>().join("; ")
                                ));
                            }
                            found.push(format!("in {}:\n{}", name(parent), steps.join("\n")));
                        }
                    } else if !trail.contains(next) && next > start {
                        let mut t = trail.clone();
                        t.push(next.clone());
                        stack.push((next.clone(), t));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn sibling_modules_of_the_agent_depend_on_each_other_one_way() {
    let found = cycles(&agent_src());
    assert!(
        found.is_empty(),
        "import cycles between the agent's modules:\n{}",
        found.join("\n")
    );
}

/// The checker itself finds a cycle and resolves `super`, `crate` and `use` trees.
#[test]
fn the_checker_sees_a_planted_cycle() {
    let dir = std::env::temp_dir().join(format!("socktrace-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a; pub mod b; pub mod c;").unwrap();
    std::fs::write(dir.join("a/mod.rs"), "mod x; mod y; pub use x::X;").unwrap();
    // x -> y through `super`, y -> x through a `use` tree; the comment and string are ignored.
    std::fs::write(dir.join("a/x.rs"), "use super::y::Y; pub struct X;").unwrap();
    std::fs::write(
        dir.join("a/y.rs"),
        "use crate::{a::{x::X}, c}; // crate::b::B\nconst S: &str = \"crate::b::B\"; pub struct Y;",
    )
    .unwrap();
    // b -> c -> b at the top, c's edge from a test module does not count.
    std::fs::write(dir.join("b.rs"), "fn f() { crate::c::g(); }").unwrap();
    std::fs::write(
        dir.join("c.rs"),
        "pub fn g() {}\n#[cfg(test)]\nmod tests { use crate::b; }\nfn h() -> crate::b::B { todo!() }",
    )
    .unwrap();
    let found = cycles(&dir);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("in crate:") && found[0].contains("b -> c: b.rs uses c"),
        "{found:#?}"
    );
    assert!(found[0].contains("c -> b: c.rs uses b"), "{found:#?}");
    assert!(
        found[1].starts_with("in a:") && found[1].contains("x -> y: a/x.rs uses a::y"),
        "{found:#?}"
    );
    // Without the function returning b, the top level is clean.
    std::fs::write(
        dir.join("c.rs"),
        "pub fn g() {}\n#[cfg(test)]\nmod tests { use crate::b; }",
    )
    .unwrap();
    assert_eq!(cycles(&dir).len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
