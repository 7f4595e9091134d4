//! The json report: the model as pretty JSON, fields in declaration order.

use serde::Serialize;

/// `value` as pretty JSON with a final newline.
pub fn render<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = serde_json::to_string_pretty(value)?;
    out.push('\n');
    Ok(out)
}
