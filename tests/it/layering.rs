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
    /// `engine/`, `accounts/`, `policies/`, `spaces/`, `settle/`, `sync/`, `plans/`,
    /// `reconcile/`, `lifecycle/`, `bulk/`, `events/`, `waiters`: what the
    /// service does.
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

/// The layer of a file, from its top-level module; `None` for a module this test does not know
/// (a new top-level module must be given a layer here: see `every_module_has_a_layer`).
fn layer(rel: &str) -> Option<Layer> {
    let top = rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs");
    Some(match top {
        "main" | "cli" | "commands" | "service" => Layer::Entry,
        "http" | "api" | "auth" => Layer::Transport,
        "dispatch" => Layer::Worker,
        "engine" | "accounts" | "policies" | "spaces" | "settle" | "sync" | "plans"
        | "reconcile" | "lifecycle" | "bulk" | "events" | "waiters" | "webhooks" | "notices" => {
            Layer::UseCase
        }
        "domain" => Layer::Domain,
        "ledger" | "db" => Layer::Store,
        "apple" => Layer::Apple,
        "apple_sim" | "local_pg" => Layer::Fixture,
        "lib" | "config" | "crypto" | "state" | "telemetry" => Layer::Shared,
        _ => return None,
    })
}

/// The crate modules a layer may not name.
fn forbidden(layer: Layer) -> &'static [&'static str] {
    const TRANSPORT: [&str; 3] = ["http", "api", "auth"];
    match layer {
        Layer::Entry | Layer::Transport => &[],
        Layer::Worker | Layer::Shared => &TRANSPORT,
        Layer::UseCase => &["http", "api", "auth", "dispatch", "commands", "service"],
        Layer::Domain => &[
            "http",
            "api",
            "auth",
            "dispatch",
            "engine",
            "accounts",
            "policies",
            "spaces",
            "settle",
            "sync",
            "plans",
            "reconcile",
            "lifecycle",
            "bulk",
            "notices",
            "waiters",
            "ledger",
            "state",
            "config",
            "commands",
            "service",
            "crypto",
        ],
        Layer::Store => &[
            "http",
            "api",
            "auth",
            "dispatch",
            "engine",
            "accounts",
            "policies",
            "spaces",
            "settle",
            "sync",
            "plans",
            "reconcile",
            "lifecycle",
            "bulk",
            "waiters",
            "state",
            "commands",
            "service",
        ],
        // The Apple client names nothing of the service: the domain may read its vocabulary
        // (error numbers, kinds of authentication failure) without a cycle.
        Layer::Apple => &[
            "http",
            "api",
            "auth",
            "dispatch",
            "engine",
            "accounts",
            "policies",
            "spaces",
            "settle",
            "sync",
            "plans",
            "reconcile",
            "lifecycle",
            "bulk",
            "waiters",
            "state",
            "commands",
            "service",
            "domain",
            "ledger",
            "db",
        ],
        Layer::Fixture => &[
            "http",
            "api",
            "auth",
            "dispatch",
            "engine",
            "accounts",
            "ledger",
            "sync",
            "plans",
            "reconcile",
        ],
    }
}

/// Signs of a SQL statement or of diesel's query builder.
const SQL: [&str; 13] = [
    "sql_query(",
    "insert_into(",
    "diesel::update(",
    "diesel::delete(",
    "diesel::select(",
    "dsl::sql",
    "RunQueryDsl",
    "QueryDsl",
    "diesel::prelude",
    "diesel_async::*",
    "batch_execute(",
    "db::schema",
    "schema::",
];

/// The code of a file in units: one per line, except that a `use` declaration spanning lines
/// is one unit (rustfmt writes long grouped imports over several lines). Comments are removed
/// (outside string literals); each unit keeps the number of its first line.
fn code_units(text: &str) -> Vec<(usize, String)> {
    let mut units: Vec<(usize, String)> = Vec::new();
    let mut open_use = false;
    for (i, line) in text.lines().enumerate() {
        let code = strip_comment(line);
        if code.trim().is_empty() {
            continue;
        }
        match units.last_mut() {
            Some((_, unit)) if open_use => unit.push_str(&code),
            _ => units.push((i + 1, code.clone())),
        }
        let trimmed = code.trim_start();
        let starts_use = trimmed.starts_with("use ")
            || trimmed.starts_with("pub use ")
            || trimmed.starts_with("pub(crate) use ");
        if starts_use || open_use {
            open_use = !code.contains(';');
        }
    }
    units
}

/// A line without its `//` comment; a `//` inside a string literal is not a comment.
fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.push(next);
                }
                continue;
            }
            '"' => in_string = !in_string,
            '/' if !in_string && chars.peek() == Some(&'/') => break,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The module path of a file under `src/` (`ledger/jobs.rs` → `[ledger, jobs]`, a `mod.rs` is
/// its folder, `lib.rs` and `main.rs` the crate root).
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The first segment of every path a (possibly nested) group starts: `{a::b, c::{d}}` → `a, c`;
/// a plain path gives its first segment.
fn first_segments(path: &str) -> Vec<String> {
    let path = path.trim_start();
    let Some(inner) = path.strip_prefix('{') else {
        let name: String = path
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        return if name.is_empty() || name == "self" {
            Vec::new()
        } else {
            vec![name]
        };
    };
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&inner[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.into_iter().flat_map(first_segments).collect()
}

/// Every top-level crate module a unit of `rel` names: through `crate::` (grouped imports
/// included, at any depth) or through `super::` chains that climb to the crate root.
fn named_modules(rel: &str, unit: &str) -> Vec<String> {
    let here = module_path(rel);
    let mut out = Vec::new();
    let mut rest = unit;
    loop {
        let next = [rest.find("crate::"), rest.find("super::")]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = next else { break };
        rest = &rest[at..];
        if let Some(path) = rest.strip_prefix("crate::") {
            out.extend(first_segments(path));
            rest = path;
            continue;
        }
        let mut climbed = 0;
        while let Some(path) = rest.strip_prefix("super::") {
            climbed += 1;
            rest = path;
        }
        if climbed >= here.len() {
            out.extend(first_segments(rest));
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

pub(crate) fn src_files() -> Vec<(String, String)> {
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
        let Some(layer) = layer(&rel) else { continue };
        for (n, line) in code_units(&text) {
            for module in named_modules(&rel, &line) {
                // Within the transport too: the HTTP machinery and authentication never name
                // the resources (the server takes `api::configure` as a value).
                let below_the_resources =
                    (rel.starts_with("http/") || rel.starts_with("auth/")) && module == "api";
                if forbidden(layer).contains(&module.as_str()) || below_the_resources {
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
    let named: Vec<String> = code_units(&text)
        .into_iter()
        .flat_map(|(n, line)| {
            named_modules("config.rs", &line)
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
        if layer == Some(Layer::Store) || layer == Some(Layer::Fixture) {
            continue;
        }
        for (n, line) in code_units(&text) {
            for sign in SQL {
                // The domain's records name their tables for diesel's mapping derives (no
                // statement); nothing else outside the store may.
                let mapping = rel == "domain/records.rs"
                    && (sign == "db::schema" || sign == "schema::" || sign == "diesel::prelude");
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
        if layer(&rel) != Some(Layer::Domain) {
            continue;
        }
        for (n, line) in code_units(&text) {
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
fn every_module_has_a_layer() {
    let unknown: Vec<String> = src_files()
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| layer(rel).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "give these modules a layer in tests/it/layering.rs: {unknown:?}"
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The rules above are only as good as their parsing.
    let units = |text: &str| -> Vec<String> {
        code_units(text).into_iter().map(|(_, unit)| unit).collect()
    };
    // A grouped import over several lines, as rustfmt writes it, nested groups included.
    let import =
        "use crate::{\n    ledger::{jobs, x},\n    http::problem::ApiError,\n};\nfn f() {}\n";
    let import_units = units(import);
    assert_eq!(import_units.len(), 2, "{import_units:?}");
    assert_eq!(
        named_modules("engine/x.rs", &import_units[0]),
        vec!["ledger", "http"]
    );
    // A path in an expression; `super::` climbing to the crate root; `super::` within a folder.
    assert_eq!(
        named_modules("engine/x.rs", "let x = crate::api::spaces::check(id);"),
        vec!["api"]
    );
    assert_eq!(
        named_modules("engine/sub/x.rs", "use super::super::super::http::x;"),
        vec!["http"]
    );
    assert_eq!(
        named_modules("engine/sub/x.rs", "use super::super::revoke;"),
        Vec::<String>::new()
    );
    // Comments go, but not a `//` inside a string.
    assert!(units("// crate::http::x\n/// sql_query(\n").is_empty());
    assert_eq!(
        named_modules(
            "engine/x.rs",
            &strip_comment(r#"let u = "https://x"; crate::http::y; // z"#)
        ),
        vec!["http"]
    );
    assert_eq!(layer("dispatch/batch.rs"), Some(Layer::Worker));
    assert_eq!(layer("waiters.rs"), Some(Layer::UseCase));
    assert_eq!(layer("ledger/jobs.rs"), Some(Layer::Store));
    assert_eq!(layer("sync/mod.rs"), Some(Layer::UseCase));
    assert_eq!(layer("unknown/mod.rs"), None);
    assert!(forbidden(Layer::Store).contains(&"engine"));
}
