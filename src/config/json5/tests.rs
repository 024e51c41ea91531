use super::*;

fn ok(text: &str) -> Value {
    parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}")).value
}

fn err(text: &str) -> String {
    parse(text).expect_err(text).to_string()
}

#[test]
fn scalars() {
    assert_eq!(ok("null"), Value::Null);
    assert_eq!(ok(" true "), Value::Bool(true));
    assert_eq!(ok("0x1F"), Value::Int(31));
    assert_eq!(ok("-0x10"), Value::Int(-16));
    assert_eq!(ok("+7"), Value::Int(7));
    assert_eq!(ok(".5"), Value::Float(0.5));
    assert_eq!(ok("5."), Value::Float(5.0));
    assert_eq!(ok("1e3"), Value::Float(1000.0));
    assert_eq!(ok("-Infinity"), Value::Float(f64::NEG_INFINITY));
    assert!(matches!(ok("NaN"), Value::Float(f) if f.is_nan()));
}

#[test]
fn strings_and_escapes() {
    assert_eq!(ok(r#"'a"b'"#), Value::String("a\"b".into()));
    assert_eq!(ok(r#""\x41\u00e9\ud83d\ude00\t""#), Value::String("Aé😀\t".into()));
    assert_eq!(ok("'line\\\ncontinued'"), Value::String("linecontinued".into()));
    assert_eq!(ok(r"'\q'"), Value::String("q".into()));
}

#[test]
fn objects_keep_positions_and_duplicates() {
    let text = "// c\n{\n  a: 1, /* x */ 'b c': [1, 2,],\n  a: 2,\n}";
    let Value::Object(m) = ok(text) else { panic!("not an object") };
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].key_pos, Pos { line: 3, column: 3 });
    assert_eq!(m[1].key, "b c");
    assert_eq!(m[1].value.pos, Pos { line: 3, column: 24 });
    assert_eq!(m[2].key_pos, Pos { line: 4, column: 3 });
}

#[test]
fn syntax_errors_name_position_and_path() {
    assert_eq!(err("{a: [1 2]}"), "1:8: a: expected ',' or ']', found '2'");
    assert_eq!(err("{a: {b: x}}"), "1:9: a.b: expected a value, found `x` (strings need quotes)");
    assert_eq!(err("{\n  a: 'x\n}"), "2:8: a: line break inside a string (write \\n)");
    assert_eq!(err("/* x"), "1:1: (root): unterminated block comment");
    assert_eq!(err("{} x"), "1:4: (root): expected the end of the document, found 'x'");
    assert_eq!(err("007"), "1:1: (root): numbers cannot have leading zeros");
    assert_eq!(err("12ab"), "1:3: (root): unexpected 'a' after a number");
    assert_eq!(err(""), "1:1: (root): expected a value, found the end of the file");
}

#[test]
fn depth_is_bounded() {
    let deep = "[".repeat(MAX_DEPTH + 1);
    assert!(err(&deep).contains("nesting deeper than"));
    let fine = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    ok(&fine);
}

#[test]
fn crlf_counts_one_line() {
    let Value::Object(m) = ok("{\r\n\r\n  k: 1}") else { panic!() };
    assert_eq!(m[0].key_pos, Pos { line: 3, column: 3 });
}
