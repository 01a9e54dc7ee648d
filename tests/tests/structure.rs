//! The crate graph stays readable: inside every crate of the workspace, the top-level modules
//! depend on each other without a cycle, so each can be read (and tested) knowing only the
//! modules below it. A `crate::x` path in module `m` (in a `use` or inline, in code or tests)
//! is an edge `m -> x`; comments are not.
//!
//! On a failure the message names the cycle and, for each edge in it, where the reference is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate whose modules are checked: its `src` directory.
const CRATES: &[&str] = &[
    "agent/src",
    "agent/core/src",
    "agent/fhir/src",
    "agent/store/src",
    "drivers/src",
    "hardware/src",
];

type Edges = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    for krate in CRATES {
        let src = root.join(krate);
        let edges = module_edges(&src);
        assert!(
            edges.len() >= 3 || krate.starts_with("agent/core"),
            "{krate}: found only {} modules; is the path right?",
            edges.len()
        );
        if let Some(cycle) = find_cycle(&edges) {
            let mut text = format!("{krate}: {}", cycle.join(" -> "));
            for pair in cycle.windows(2) {
                let sites = &edges[&pair[0]][&pair[1]];
                text.push_str(&format!(
                    "\n    {} -> {}: {}",
                    pair[0],
                    pair[1],
                    sites.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                ));
            }
            failures.push(text);
        }
    }
    assert!(
        failures.is_empty(),
        "import cycles between modules:\n{}",
        failures.join("\n")
    );
}

/// The store owns its schema: SQL (and the SQLite API) appears in `vitalgate-store`
/// (`agent/store`) only; every other crate of the agent asks it through typed operations.
#[test]
fn only_the_store_speaks_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut outside = Vec::new();
    for krate in CRATES.iter().filter(|k| !k.starts_with("agent/store")) {
        let src = root.join(krate);
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).expect("read source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("rusqlite") || code.contains("Connection::open") {
                    outside.push(format!(
                        "{krate}/{}:{}",
                        file.strip_prefix(&src).expect("under src").display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        outside.is_empty(),
        "SQLite used outside the store: {outside:?}"
    );
}

#[test]
fn the_checker_finds_a_cycle_and_accepts_a_layering() {
    fn add(edges: &mut Edges, a: &str, b: &str) {
        edges
            .entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .push(format!("{a}.rs:1"));
    }
    let mut edges = Edges::new();
    add(&mut edges, "store", "core");
    add(&mut edges, "sync", "store");
    add(&mut edges, "fleet", "sync");
    assert_eq!(find_cycle(&edges), None);
    add(&mut edges, "sync", "fleet");
    let cycle = find_cycle(&edges).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"fleet".to_owned()) && cycle.contains(&"sync".to_owned()));

    let refs = references(
        "use crate::{\n    a::X,\n    b::{self, Y},\n};\n// crate::c\nlet z = crate::d::f(); // crate::e",
    );
    assert_eq!(refs, ["a", "b", "d"].map(String::from).to_vec());
    assert!(references("use vitalgate_crate::x; $crate::y").is_empty());
}

/// `module -> module it references -> where`, for the top-level modules of the crate at `src`.
fn module_edges(src: &Path) -> Edges {
    let mut edges = Edges::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("under src");
        let Some(module) = top_module(rel) else {
            continue;
        };
        edges.entry(module.clone()).or_default();
        let text = std::fs::read_to_string(&file).expect("read source");
        for (line, target) in references_by_line(&text) {
            if target != module {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .push(format!("{}:{line}", rel.display()));
            }
        }
    }
    edges
}

/// The top-level module a file belongs to; `None` for the crate root and for binaries.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    if first == "bin" || first == "lib.rs" || first == "main.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The top-level modules a source text names through `crate::`.
fn references(text: &str) -> Vec<String> {
    references_by_line(text)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// The top-level modules a source text names through `crate::`, each with the line it is on;
/// comments excluded. A grouped import (`crate::{a::X, b::{self, Y}}`, over several lines or
/// one) names each of its members.
fn references_by_line(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        let line = code[..at].matches('\n').count() + 1;
        // `vitalgate_crate::` or `$crate::` are not this crate's paths.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(ident(&item).map(|m| (line, m)));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.extend(ident(&item).map(|m| (line, m)));
        } else {
            out.extend(ident(rest).map(|m| (line, m)));
        }
    }
    out
}

fn ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let id: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    // `crate::X` where X is a type or function of the crate root is no module edge.
    (!id.is_empty() && id.starts_with(|c: char| c.is_ascii_lowercase()) && id != "self")
        .then_some(id)
}

/// One cycle (first node repeated at the end), if the graph has any.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        edges: &Edges,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).expect("on the path");
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        let targets: BTreeSet<&String> = edges
            .get(node)
            .map(|t| t.keys().collect())
            .unwrap_or_default();
        for t in targets {
            if let Some(c) = visit(t, edges, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        let mut path = Vec::new();
        if let Some(c) = visit(node, edges, &mut marks, &mut path) {
            return Some(c);
        }
    }
    None
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
