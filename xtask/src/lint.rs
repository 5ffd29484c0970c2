//! Checks of the source tree that no compiler lint makes here, run as unit tests by
//! `cargo xtask test`:
//! - every `unsafe` block of the kernel programs says why it is sound (clippy's
//!   `undocumented_unsafe_blocks` cannot run on `ebpf/`: no `core` for the BPF target);
//! - the userspace stays walkable: no file over 400 lines, no function over 80.
#![cfg(test)]

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 400;
const MAX_FN_LINES: usize = 80;
/// Files and functions allowed past the limits, with the reason.
const ALLOWED: &[(&str, &str)] = &[];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Line numbers (1-based) of `unsafe` blocks without a `SAFETY:` comment in front of
/// their statement.
fn undocumented_unsafe(source: &str) -> Vec<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if !code.contains("unsafe {") || line.contains("SAFETY:") {
            continue;
        }
        // Walk back over the statement's earlier lines and the comments above it.
        let mut documented = false;
        for prev in lines[..i].iter().rev() {
            let t = prev.trim();
            if t.starts_with("//") {
                if t.contains("SAFETY:") {
                    documented = true;
                    break;
                }
                continue;
            }
            if t.ends_with(';') || t.ends_with('{') || t.ends_with('}') || t.is_empty() {
                break;
            }
        }
        if !documented {
            missing.push(i + 1);
        }
    }
    missing
}

/// (name, first line, length) of each function in `source` whose body closes at the
/// indentation of its `fn` line.
fn functions(source: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let rest = [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "async ",
            "const ",
            "unsafe ",
        ]
        .iter()
        .fold(trimmed, |t, p| t.strip_prefix(p).unwrap_or(t));
        let rest = rest.strip_prefix("async ").unwrap_or(rest);
        let Some(name) = rest.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = name
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + 1..].iter().position(|l| l.starts_with(&close)) {
            found.push((name, i + 1, end + 2));
        }
    }
    found
}

#[test]
fn every_unsafe_block_of_the_kernel_programs_says_why() {
    let mut missing = Vec::new();
    for file in rust_files(&crate::root().join("ebpf/src")) {
        for line in undocumented_unsafe(&std::fs::read_to_string(&file).unwrap()) {
            missing.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe blocks without a `// SAFETY:` comment: {missing:#?}"
    );
}

#[test]
fn userspace_files_and_functions_stay_small() {
    let src = crate::root().join("userspace/src");
    let mut over = Vec::new();
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&src).unwrap().display().to_string();
        let allowed = |what: &str| ALLOWED.iter().any(|(a, _)| *a == what);
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES && !allowed(&name) {
            over.push(format!("{name}: {lines} lines (at most {MAX_FILE_LINES})"));
        }
        for (f, at, len) in functions(&text) {
            if len > MAX_FN_LINES && !allowed(&format!("{name}::{f}")) {
                over.push(format!(
                    "{name}:{at} fn {f}: {len} lines (at most {MAX_FN_LINES})"
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "split these (or allow them in lint.rs with the reason): {over:#?}"
    );
}

#[test]
fn the_checks_find_what_they_look_for() {
    let unsafe_src = "fn f() {\n    // SAFETY: fine.\n    let a = unsafe { g() };\n    let b = unsafe { g() };\n}\n";
    assert_eq!(undocumented_unsafe(unsafe_src), vec![4]);
    let long_body = "    x();\n".repeat(90);
    let src = format!("pub async fn long() {{\n{long_body}}}\n\nfn short() {{\n}}\n");
    let fns = functions(&src);
    assert_eq!(fns, vec![("long".into(), 1, 92), ("short".into(), 94, 2)]);
}
