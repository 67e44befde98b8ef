//! Repository-wide rules, checked inside `cargo test` (after rust-analyzer's and
//! TigerBeetle's tidy checks): things a reviewer would otherwise have to remember.
//!
//! - every Rust file starts with a `//!` module doc;
//! - no `dbg!`, `todo!`, `unimplemented!` or FIXME in code;
//! - the state machine (`engine/src/ledger/`) and the loyalty programme (`engine/src/loyalty/`,
//!   but for its rule file reader) read no clock and do no I/O;
//! - no `f32`/`f64` in the state machine, the loyalty programme, the WAL or snapshots;
//! - the dependency arrows hold: `engine` links no tokio, axum or postgres; `protocol` links
//!   neither `engine` nor `server`; `wal-tools` does not link `ledger-server`; nothing depends
//!   on `ledger-server`;
//! - every `RejectCode` and record kind is named in the docs that specify them;
//! - no `#[ignore]`d test.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "fixtures" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn every_rust_file_has_a_module_doc() {
    let missing: Vec<String> = rust_files()
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            !text
                .lines()
                .find(|line| !line.trim().is_empty())
                .is_some_and(|line| line.starts_with("//!"))
        })
        .map(|path| relative(path))
        .collect();
    assert!(missing.is_empty(), "files without a //! module doc: {missing:?}");
}

#[test]
fn no_debugging_leftovers() {
    let banned = ["dbg!(", "todo!(", "unimplemented!(", "FIXME", "#[ignore"];
    let this_file = Path::new(file!()).file_name().unwrap().to_owned();
    let mut found = Vec::new();
    for path in rust_files() {
        if path.file_name() == Some(this_file.as_os_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            for pattern in banned {
                if line.contains(pattern) {
                    found.push(format!("{}:{}: {pattern}", relative(&path), number + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_state_machine_reads_no_clock_and_does_no_io() {
    let banned = ["SystemTime", "Instant", "std::fs", "std::net", "std::thread", "std::io::"];
    let mut found = Vec::new();
    for path in rust_files() {
        let file = relative(&path);
        // The rule file reader is the loyalty programme's one edge: it reads the operator's file.
        let pure = file.starts_with("engine/src/ledger/")
            || (file.starts_with("engine/src/loyalty/")
                && file != "engine/src/loyalty/rules_file.rs");
        if !pure {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for pattern in banned {
                if code.contains(pattern) {
                    found.push(format!("{}:{}: {pattern}", relative(&path), number + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "the ledger state machine must stay pure: {found:#?}");
}

/// Money, points and rates are integers: no float type appears in the state machine, the
/// loyalty programme, the WAL or snapshots (`clippy::float_arithmetic` is denied as well, but a
/// float can be carried without arithmetic).
#[test]
fn no_floats_where_money_is_computed() {
    let mut found = Vec::new();
    for path in rust_files() {
        let file = relative(&path);
        let money =
            ["engine/src/ledger/", "engine/src/loyalty/", "engine/src/wal/", "engine/src/snapshot"]
                .iter()
                .any(|prefix| file.starts_with(prefix));
        if !money {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let words = code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            if words.clone().any(|word| word == "f32" || word == "f64") {
                found.push(format!("{file}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "floats where money is computed: {found:#?}");
}

/// The `[dependencies]` of a crate's manifest, by name.
fn dependencies(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(manifest)).unwrap();
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").to_string();
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn dependency_arrows_point_one_way() {
    let engine = dependencies("engine/Cargo.toml");
    for banned in ["tokio", "axum", "tokio-postgres", "hyper", "ledger-server", "ledger-protocol"] {
        assert!(
            !engine.contains(&banned.to_string()),
            "engine must not depend on {banned}: {engine:?}"
        );
    }
    let wal_tools = dependencies("wal-tools/Cargo.toml");
    assert!(
        !wal_tools.contains(&"ledger-server".to_string()),
        "wal-tools reads files, it does not link the server"
    );
    let protocol = dependencies("protocol/Cargo.toml");
    for banned in ["ledger-engine", "ledger-server"] {
        assert!(
            !protocol.contains(&banned.to_string()),
            "the protocol crate is shared with clients: it must not depend on {banned}"
        );
    }
    let loadtest = dependencies("loadtest/Cargo.toml");
    assert!(
        !loadtest.contains(&"ledger-engine".to_string()),
        "the load generator talks to the server, not the engine"
    );
    for manifest in [
        "engine/Cargo.toml",
        "protocol/Cargo.toml",
        "wal-tools/Cargo.toml",
        "loadtest/Cargo.toml",
        "benches/Cargo.toml",
    ] {
        assert!(
            !dependencies(manifest).contains(&"ledger-server".to_string()),
            "{manifest} depends on the server"
        );
    }
}

#[test]
fn every_reject_code_and_record_kind_is_documented() {
    let reject = std::fs::read_to_string(root().join("engine/src/reject.rs")).unwrap();
    // Lines of the `reject_codes!` table: `Name = 7, "snake_name";`.
    let codes: Vec<&str> = reject
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with(|c: char| c.is_ascii_uppercase()) && line.contains(" = "))
        .filter_map(|line| line.strip_suffix(';'))
        .filter_map(|line| line.split('"').nth(1))
        .collect();
    assert!(codes.len() >= 28, "found {codes:?}");
    let design = std::fs::read_to_string(root().join("docs/design-decisions.md")).unwrap();
    let missing: Vec<&&str> =
        codes.iter().filter(|code| !design.contains(&format!("`{code}`"))).collect();
    assert!(missing.is_empty(), "reject codes missing from docs/design-decisions.md: {missing:?}");

    let wal_format = std::fs::read_to_string(root().join("docs/wal-format.md")).unwrap();
    let record = std::fs::read_to_string(root().join("engine/src/ledger/record.rs")).unwrap();
    let kinds: Vec<&str> = record
        .lines()
        .filter(|line| line.trim().starts_with("RecordKind::") && line.contains("=> \""))
        .filter_map(|line| line.split('"').nth(1))
        .collect();
    assert!(kinds.len() >= 12, "{kinds:?}");
    let missing: Vec<&&str> =
        kinds.iter().filter(|kind| !wal_format.contains(&format!("`{kind}`"))).collect();
    assert!(missing.is_empty(), "record kinds missing from docs/wal-format.md: {missing:?}");
}
