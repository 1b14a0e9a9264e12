//! The docs stay true to the code: every test `docs/rules.md` cites as proof exists.

use std::path::Path;

#[test]
fn every_test_the_rules_cite_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("docs/rules.md")).expect("docs/rules.md");
    let mut cited = 0;
    let mut missing = Vec::new();
    for quoted in rules.split('`').skip(1).step_by(2) {
        let Some((file, function)) = quoted.split_once(".rs::") else {
            continue;
        };
        cited += 1;
        let path = root.join(format!("{file}.rs"));
        let found = std::fs::read_to_string(&path)
            .map(|text| text.contains(&format!("fn {function}(")))
            .unwrap_or(false);
        if !found {
            missing.push(quoted.to_owned());
        }
    }
    assert!(cited > 30, "docs/rules.md cites only {cited} tests");
    assert!(
        missing.is_empty(),
        "docs/rules.md cites tests that do not exist: {missing:#?}"
    );
}
