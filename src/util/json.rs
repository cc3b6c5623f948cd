//! JSON parsing with messages that name the key: serde's errors give a line and column only, so the key nearest
//! before that position is added; a config must be a JSON object (serde would also fill a struct from an array).

use serde::de::DeserializeOwned;

/// The key of the `"key":` nearest before the position of `e` in `text` (the field being read when it failed).
pub fn key_before(text: &[u8], e: &serde_json::Error) -> Option<String> {
    if e.line() == 0 {
        return None;
    }
    let mut offset = 0;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if i + 1 == e.line() {
            offset += e.column().min(line.len());
            break;
        }
        offset += line.len() + 1;
    }
    let prefix = &text[..offset.min(text.len())];
    let mut i = prefix.len();
    while i > 0 {
        i -= 1;
        if prefix[i] != b':' {
            continue;
        }
        let before = prefix[..i].trim_ascii_end();
        if let Some(inner) = before.strip_suffix(b"\"") {
            let start = inner.iter().rposition(|&b| b == b'"')?;
            return Some(String::from_utf8_lossy(&inner[start + 1..]).into_owned());
        }
    }
    None
}

/// serde's message for `e`, with ` (key "name")` when a key is found.
pub fn describe(text: &[u8], e: &serde_json::Error) -> String {
    match key_before(text, e) {
        Some(k) if e.is_data() => format!("key \"{k}\": {e}"),
        _ => e.to_string(),
    }
}

/// `text` as a `T` read from a JSON object.
pub fn from_object<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| describe(text.as_bytes(), &e))?;
    if !v.is_object() {
        return Err(format!("not a JSON object (the top level is {})", match v {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "null",
        }));
    }
    // Parse the text again (not the Value) so that a type error carries a line and column.
    serde_json::from_str(text).map_err(|e| describe(text.as_bytes(), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct C {
        a: usize,
        b: f32,
    }

    #[test]
    fn names_the_key_and_rejects_non_objects() {
        let e = from_object::<C>("{\"a\": 1,\n  \"b\": \"x\"}").unwrap_err();
        assert!(e.starts_with("key \"b\": invalid type: string \"x\""), "{e}");
        let e = from_object::<C>("{\"a\": -1, \"b\": 2}").unwrap_err();
        assert!(e.starts_with("key \"a\""), "{e}");
        let e = from_object::<C>("[1, 2.0]").unwrap_err();
        assert!(e.contains("not a JSON object") && e.contains("array"), "{e}");
        assert_eq!(from_object::<C>("{\"a\": 1, \"b\": 2}").unwrap().a, 1);
    }
}
