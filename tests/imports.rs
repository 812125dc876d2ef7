//! The import graph of the workspace, read from the sources.
//!
//! Two rules (README, "Layout"; docs/reading.md):
//! 1. No import circle between the files of any crate. A module may use what
//!    its parent module defines (a data set uses the `Dataset` trait of
//!    `data/mod.rs`), and a parent may use its children, but no two files
//!    may reach each other through any chain of imports.
//! 2. tessera-mim's folders are layered: `error` and `rng`, then `config`,
//!    then `data` and `model`, then `train` and `eval`, then `io`, then
//!    `run`. A file imports only from its own folder and from earlier layers
//!    (never from a sibling of its layer, never from a later one), and names
//!    each item by the module that defines it, never through the crate
//!    root's re-exports.
//!
//! A "file" is a module file; inline modules (`mod tests { .. }`) belong to
//! the file they are written in. Every `crate::`, `super::` and `self::`
//! path counts, in `use` declarations and inline, test modules included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file as a module: its path from the crate root (`["data",
/// "loader"]`), and the absolute paths it names.
struct ModFile {
    module: Vec<String>,
    rel: String,
    paths: Vec<Vec<String>>,
    /// Names this file re-exports with `pub use` (only read for crate roots).
    reexports: BTreeSet<String>,
}

/// Removes comments, string and character literals (keeping line breaks),
/// so that only code is scanned.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !is_ident(b.get(i.wrapping_sub(1))) {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime.
            let end = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The tokens of stripped code: identifiers, `::`, and single punctuation.
fn tokens(code: &str) -> Vec<String> {
    let b: Vec<char> = code.chars().collect();
    let mut t = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphanumeric() || c == '_' {
            let s = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            t.push(b[s..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            t.push("::".into());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            t.push(c.to_string());
            i += 1;
        }
    }
    t
}

/// Resolves a path written in module `at` (`crate::a::b`, `super::x`,
/// `self::y`) to an absolute path; `None` for paths into other crates.
fn absolute(at: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => at.to_vec(),
        _ => return None,
    };
    let mut rest = &path[usize::from(path[0] == "crate")..];
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Expands the tree of a `use` declaration starting at `toks[i]` (after
/// `use`) into its paths; returns them and the index after the `;`.
fn use_tree(toks: &[String], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        match toks.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    i = use_tree(toks, i, path.clone(), out);
                    match toks.get(i).map(String::as_str) {
                        Some(",") => i += 1,
                        Some("}") => {
                            i += 1;
                            break;
                        }
                        _ => return i,
                    }
                    if toks.get(i).map(String::as_str) == Some("}") {
                        i += 1;
                        break;
                    }
                }
                return i;
            }
            Some("::") => i += 1,
            Some("as") => {
                out.push(path.clone());
                return i + 2;
            }
            Some(",") | Some("}") | Some(";") | None => {
                if !path.is_empty() {
                    out.push(path.clone());
                }
                return i;
            }
            Some("self") if !path.is_empty() => {
                out.push(path.clone());
                return i + 1;
            }
            Some("*") => {
                out.push(path.clone());
                return i + 1;
            }
            Some(tok) => {
                path.push(tok.to_string());
                i += 1;
            }
        }
    }
}

/// Reads one file: the absolute paths it names (resolved in the inline
/// module each is written in) and, at a crate root, what it re-exports.
fn scan(module: Vec<String>, rel: String, src: &str) -> ModFile {
    let toks = tokens(&strip(src));
    let mut paths = Vec::new();
    let mut reexports = BTreeSet::new();
    // Inline modules open at a brace depth; `stack` holds (name, depth).
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(stack.iter().map(|(n, _)| n.clone()))
            .collect();
        match toks[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
            }
            "mod" if toks.get(i + 2).map(String::as_str) == Some("{") => {
                stack.push((toks[i + 1].clone(), depth));
                depth += 1;
                i += 3;
                continue;
            }
            "use" => {
                let public = i > 0 && toks[i - 1] == "pub";
                let mut found = Vec::new();
                let end = use_tree(&toks, i + 1, Vec::new(), &mut found);
                for p in found {
                    if public
                        && here == module
                        && module.is_empty()
                        && let Some(last) = p.last()
                    {
                        reexports.insert(last.clone());
                    }
                    if let Some(abs) = absolute(&here, &p) {
                        paths.push(abs);
                    }
                }
                i = end.max(i + 1);
                continue;
            }
            "crate" | "super" | "self" if toks.get(i + 1).map(String::as_str) == Some("::") => {
                let prev = i.checked_sub(1).map(|k| toks[k].as_str());
                if prev != Some("::") {
                    let mut p = vec![toks[i].clone()];
                    let mut j = i + 1;
                    while toks.get(j).map(String::as_str) == Some("::")
                        && toks.get(j + 1).is_some_and(|t| is_ident(t.chars().next().as_ref()))
                    {
                        p.push(toks[j + 1].clone());
                        j += 2;
                    }
                    if let Some(abs) = absolute(&here, &p) {
                        paths.push(abs);
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    ModFile {
        module,
        rel,
        paths,
        reexports,
    }
}

/// Every module file of the crate whose root is `root` (`lib.rs` or
/// `main.rs`), by module path.
fn crate_files(root: &Path) -> BTreeMap<Vec<String>, ModFile> {
    let dir = root.parent().expect("a root file in a folder");
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                let last = module.pop().unwrap();
                let stem = last.trim_end_matches(".rs").to_string();
                let is_root = module.is_empty() && p == root;
                if !(stem == "mod" || is_root) {
                    module.push(stem);
                }
                let src = std::fs::read_to_string(&p).unwrap();
                let rel = rel.to_string_lossy().into_owned();
                files.insert(module.clone(), scan(module, rel, &src));
            }
        }
    }
    files
}

/// The file a path lands in: the longest prefix of it that is a module file.
fn target<'a>(files: &'a BTreeMap<Vec<String>, ModFile>, path: &[String]) -> Option<&'a ModFile> {
    (0..=path.len()).rev().find_map(|n| files.get(&path[..n]))
}

/// Edges between files, parent-to-descendant ones left out (rule 1).
fn edges(files: &BTreeMap<Vec<String>, ModFile>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.values() {
        let out = g.entry(f.rel.clone()).or_default();
        for p in &f.paths {
            if let Some(t) = target(files, p)
                && t.rel != f.rel
                && !t.module.starts_with(&f.module)
            {
                out.insert(t.rel.clone());
            }
        }
    }
    g
}

/// The circles of a graph, each as the files of one strongly connected
/// component (Tarjan's algorithm).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const ROOTS: [&str; 4] = [
    "crates/kernels/src/lib.rs",
    "crates/tensor/src/lib.rs",
    "crates/mim/src/lib.rs",
    "crates/cli/main.rs",
];

#[test]
fn no_crate_has_an_import_circle() {
    let mut found = Vec::new();
    for root in ROOTS {
        let files = crate_files(&workspace().join(root));
        assert!(files.len() > 3, "{root}: too few files read");
        for c in circles(&edges(&files)) {
            found.push(format!("{root}: {}", c.join(" ↔ ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

/// The layer of each top-level module of tessera-mim (rule 2).
const LAYERS: [(&str, usize); 9] = [
    ("error", 0),
    ("rng", 0),
    ("config", 1),
    ("data", 2),
    ("model", 2),
    ("train", 3),
    ("eval", 3),
    ("io", 4),
    ("run", 5),
];

#[test]
fn mim_folders_import_only_from_earlier_layers() {
    let files = crate_files(&workspace().join("crates/mim/src/lib.rs"));
    let root = &files[&Vec::new()];
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|l| l.1);
    let mut wrong = Vec::new();
    for f in files.values().filter(|f| !f.module.is_empty()) {
        let top = &f.module[0];
        let mine = layer(top).unwrap_or_else(|| panic!("{}: module {top} has no layer in LAYERS", f.rel));
        for p in &f.paths {
            let Some(t) = target(&files, p) else { continue };
            if t.module.is_empty() {
                if p.len() == 1 || root.reexports.contains(&p[0]) {
                    wrong.push(format!(
                        "{} names crate::{} through the crate root",
                        f.rel,
                        p.join("::")
                    ));
                }
                continue;
            }
            let theirs = layer(&t.module[0]).unwrap_or(usize::MAX);
            if t.module[0] != *top && theirs >= mine {
                wrong.push(format!("{} ({top}) imports {} ({})", f.rel, t.rel, t.module[0]));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

/// The checker itself finds what it must: a circle, a parent's use of its
/// child left out, paths through `super` and nested `use` trees.
#[test]
fn the_scanner_reads_paths_as_rust_does() {
    let s = scan(
        vec!["a".into(), "b".into()],
        "a/b.rs".into(),
        r#"
        // use crate::commented::Out;
        use crate::x::{y::{self, Z}, w as v};
        use super::sib::T;
        const S: &str = "crate::in_a_string";
        fn f() { let _ = crate::q::r(); let c = '"'; }
        mod tests { use super::*; use super::super::up::U; }
        "#,
    );
    let got: BTreeSet<String> = s.paths.iter().map(|p| p.join("::")).collect();
    let want: BTreeSet<String> = ["x::y", "x::y::Z", "x::w", "a::sib::T", "q::r", "a::b", "a::up::U"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(circles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}
