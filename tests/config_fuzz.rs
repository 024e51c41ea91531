//! The loader never panics, whatever the text: arbitrary strings, and examples with random
//! edits (which get much deeper into the walk than random text does).

use clusterserver::config::{LoadOptions, parse_str};
use proptest::prelude::*;

const EXAMPLES: [&str; 3] = [
    include_str!("../config/nat-2atm.json5"),
    include_str!("../config/tunnel-2atm.json5"),
    include_str!("../tests/bad-configs/many-errors.json5"),
];

fn check(text: &str) {
    if let Err(errors) = parse_str("fuzz.json5", text, &LoadOptions::default()) {
        assert!(!errors.is_empty());
        for e in &errors {
            assert!(e.line >= 1 && e.column >= 1, "{e}");
        }
    }
}

/// An edit: at a relative position, delete some characters and insert a snippet.
fn edit() -> impl Strategy<Value = (f64, usize, String)> {
    let snippet = prop_oneof![
        Just(String::new()),
        Just(",".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("\"".to_string()),
        Just("/*".to_string()),
        Just("0x".to_string()),
        Just("null".to_string()),
        Just("-1e9".to_string()),
        Just("x: 1,".to_string()),
        ".{0,8}",
    ];
    (0.0..1.0f64, 0..6usize, snippet)
}

fn apply(text: &str, edits: &[(f64, usize, String)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, delete, insert) in edits {
        let i = ((chars.len() as f64) * at) as usize;
        let end = (i + delete).min(chars.len());
        chars.splice(i..end, insert.chars());
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text);
    }

    #[test]
    fn edited_examples_never_panic(which in 0..EXAMPLES.len(), edits in prop::collection::vec(edit(), 1..4)) {
        check(&apply(EXAMPLES[which], &edits));
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let text = format!("{{a: {}}}", "[".repeat(100_000));
    let errors = parse_str("deep.json5", &text, &LoadOptions::default()).expect_err("too deep");
    assert!(errors.to_string().contains("nesting deeper than"));
}
