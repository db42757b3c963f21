//! The server's modules depend on each other one way only: no module reaches, through others,
//! back to itself. A cycle is how layers melt into one (it took a redesign to cut the four the
//! code once had), so it fails here the moment one appears, naming the modules in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules re-exported from `machat-proto`: the bottom layer, outside this crate's graph.
const PROTO: [&str; 4] = ["codec", "protocol", "refusal", "request"];

/// Each top-level module of `src/` (a file or a directory), with the modules its non-test code
/// names as `crate::MODULE`. Comments are skipped: a doc link is not a dependency.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let deps = graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && !PROTO.contains(&name.as_str()) {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A path from `to` back to `from`, if there is one.
fn path_back(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if to == from {
        return Some(vec![from.to_owned()]);
    }
    if !seen.insert(to.to_owned()) {
        return None;
    }
    for next in graph.get(to).into_iter().flatten() {
        if let Some(mut path) = path_back(graph, from, next, seen) {
            path.insert(0, to.to_owned());
            return Some(path);
        }
    }
    None
}

#[test]
fn the_server_modules_have_no_dependency_cycle() {
    let graph = graph();
    assert!(graph.contains_key("room") && graph.contains_key("client"));
    assert!(graph["room"].contains("store"), "the graph is read");
    for (module, deps) in &graph {
        for dep in deps {
            if let Some(path) = path_back(&graph, module, dep, &mut BTreeSet::new()) {
                panic!("a cycle: {module} -> {}", path.join(" -> "));
            }
        }
    }
}
