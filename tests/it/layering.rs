//! The layering of `src/` (README "Architecture"), checked on the source text: imports run one
//! way, transport → use cases → domain / store / Apple client, and every SQL statement is in the
//! store. A failure names the file and the line that breaks the rule.

use std::path::{Path, PathBuf};

/// Which layer a source file belongs to, from its path under `src/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// `main`, `cli`, `commands/`, `service`: assembles everything.
    Entry,
    /// `http/`, `api/`, `auth/`: requests in, problems out.
    Transport,
    /// `dispatch/`: the background worker loop, a caller of use cases like a handler.
    Worker,
    /// `engine/`, `accounts/`, `policies/`, `spaces/`, `settle/`, `waiters`: what the service does.
    UseCase,
    /// `domain/`: the vocabulary and the rules; no I/O.
    Domain,
    /// `ledger/`, `db/`: every SQL statement.
    Store,
    /// `apple/`: the client of Apple's API.
    Apple,
    /// `config`, `crypto`, `telemetry/`, `state`, `lib`: shared leaves and wiring.
    Shared,
    /// `apple_sim/`, `local_pg`: development and test fixtures.
    Fixture,
}

fn layer(rel: &str) -> Layer {
    let top = rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs");
    match top {
        "main" | "cli" | "commands" | "service" => Layer::Entry,
        "http" | "api" | "auth" => Layer::Transport,
        "dispatch" => Layer::Worker,
        "engine" | "accounts" | "policies" | "spaces" | "settle" | "waiters" => Layer::UseCase,
        "domain" => Layer::Domain,
        "ledger" | "db" => Layer::Store,
        "apple" => Layer::Apple,
        "apple_sim" | "local_pg" => Layer::Fixture,
        _ => Layer::Shared,
    }
}

/// The crate modules a layer may not name.
fn forbidden(layer: Layer) -> &'static [&'static str] {
    const TRANSPORT: [&str; 3] = ["http", "api", "auth"];
    match layer {
        Layer::Entry | Layer::Transport => &[],
        Layer::Worker | Layer::Shared => &TRANSPORT,
        Layer::UseCase => &["http", "api", "auth", "dispatch", "commands", "service"],
        Layer::Domain => &[
            "http", "api", "auth", "dispatch", "engine", "accounts", "policies", "spaces",
            "settle", "waiters", "ledger", "state", "config", "commands", "service", "crypto",
        ],
        Layer::Store | Layer::Apple => &[
            "http", "api", "auth", "dispatch", "engine", "accounts", "policies", "spaces",
            "settle", "waiters", "state", "commands", "service",
        ],
        Layer::Fixture => &[
            "http", "api", "auth", "dispatch", "engine", "accounts", "ledger",
        ],
    }
}

/// Signs of a SQL statement or of diesel's query builder.
const SQL: [&str; 8] = [
    "sql_query(",
    "diesel::insert_into",
    "diesel::update(",
    "diesel::delete(",
    "RunQueryDsl",
    "QueryDsl",
    "batch_execute(",
    "db::schema",
];

/// Source lines without comments (line comments and doc comments), with their numbers.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let code = match line.find("//") {
                Some(at) => &line[..at],
                None => line,
            };
            (!code.trim().is_empty()).then(|| (i + 1, code.to_owned()))
        })
        .collect()
}

/// Every `crate::<module>` a line names, grouped imports (`crate::{a, b::c}`) included.
fn named_modules(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").to_owned();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    files
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&root)
                .expect("under src/")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("source is UTF-8");
            (rel, text)
        })
        .collect()
}

#[test]
fn imports_run_one_way() {
    let mut broken = Vec::new();
    for (rel, text) in src_files() {
        let layer = layer(&rel);
        for (n, line) in code_lines(&text) {
            for module in named_modules(&line) {
                if forbidden(layer).contains(&module.as_str()) {
                    broken.push(format!(
                        "{rel}:{n} ({layer:?}) names crate::{module}: {}",
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layering:\n{}",
        broken.join("\n")
    );
}

#[test]
fn config_is_a_leaf() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs"))
        .expect("src/config.rs");
    let named: Vec<String> = code_lines(&text)
        .into_iter()
        .flat_map(|(n, line)| {
            named_modules(&line)
                .into_iter()
                .map(move |m| format!("{n}: {m}"))
        })
        .collect();
    assert!(named.is_empty(), "config.rs names crate modules: {named:?}");
}

#[test]
fn sql_is_only_in_the_store() {
    let mut found = Vec::new();
    for (rel, text) in src_files() {
        let layer = layer(&rel);
        if layer == Layer::Store || layer == Layer::Fixture {
            continue;
        }
        for (n, line) in code_lines(&text) {
            for sign in SQL {
                // The domain's records name their tables for diesel's mapping derives (no
                // statement); nothing else outside the store may.
                let mapping = rel == "domain/records.rs" && sign == "db::schema";
                if line.contains(sign) && !mapping {
                    found.push(format!("{rel}:{n} `{sign}`: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside src/ledger and src/db:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_domain_does_no_io() {
    const IO: [&str; 6] = [
        "diesel_async",
        "tokio",
        "reqwest",
        "actix",
        "std::fs",
        "std::net",
    ];
    let mut found = Vec::new();
    for (rel, text) in src_files() {
        if layer(&rel) != Layer::Domain {
            continue;
        }
        for (n, line) in code_lines(&text) {
            for sign in IO {
                if line.contains(sign) {
                    found.push(format!("{rel}:{n} `{sign}`: {}", line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "I/O in the domain:\n{}", found.join("\n"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The rules above are only as good as their parsing: a grouped import, a path in an
    // expression and a commented-out line.
    assert_eq!(
        named_modules("use crate::{http::problem::ApiError, ledger};"),
        vec!["http", "ledger"]
    );
    assert_eq!(
        named_modules("let x = crate::api::spaces::check(id);"),
        vec!["api"]
    );
    assert!(code_lines("// crate::http::x\n/// sql_query(\n").is_empty());
    assert_eq!(layer("dispatch/batch.rs"), Layer::Worker);
    assert_eq!(layer("waiters.rs"), Layer::UseCase);
    assert_eq!(layer("ledger/jobs.rs"), Layer::Store);
    assert!(forbidden(Layer::Store).contains(&"engine"));
}
