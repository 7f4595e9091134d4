//! Just enough PromQL reading for the lint: which metric names an expression
//! selects, and its label matchers. Not a parser: it skips strings, label
//! matcher blocks, range brackets and the label lists of `by`, `without`,
//! `on`, `ignoring`, `group_left` and `group_right`, and takes every other
//! identifier that is not a function call, an aggregation, a keyword or a
//! template variable to be a metric name.

/// Keywords that are never metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// One label matcher, e.g. `member=~"$member"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// Label name.
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    /// The quoted value, unquoted (escapes left as written).
    pub value: String,
}

/// The metric names `expr` selects, in order of appearance (repeats kept).
pub fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_block(&chars, i, '{', '}'),
            '[' => i = skip_block(&chars, i, '[', ']'),
            '$' => {
                // A template variable: `$name` or `${name...}`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_block(&chars, i, '{', '}');
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || (c == '.' && next_is_digit(&chars, i)) => {
                // A number or a duration (`1.5e3`, `5m`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = next_non_space(&chars, i);
                if LABEL_LISTS.contains(&word.as_str()) {
                    if let Some(open) = next.filter(|&j| chars[j] == '(') {
                        i = skip_block(&chars, open, '(', ')');
                    }
                    continue;
                }
                if KEYWORDS.contains(&word.as_str()) {
                    continue;
                }
                let is_call = next.is_some_and(|j| chars[j] == '(');
                let is_aggregation = next.is_some_and(|j| {
                    let rest: String = chars[j..].iter().take(8).collect();
                    rest.starts_with("by") || rest.starts_with("without")
                });
                if !is_call && !is_aggregation {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The label names in the `by`, `without`, `on`, `ignoring`, `group_left`
/// and `group_right` lists of `expr`, in order of appearance.
pub fn grouping_labels(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_block(&chars, i, '{', '}'),
            '[' => i = skip_block(&chars, i, '[', ']'),
            c if is_ident_start(c) && (i == 0 || !is_ident(chars[i - 1])) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if !LABEL_LISTS.contains(&word.as_str()) {
                    continue;
                }
                if let Some(open) = next_non_space(&chars, i).filter(|&j| chars[j] == '(') {
                    let end = skip_block(&chars, open, '(', ')');
                    let inner: String = chars[open + 1..end.saturating_sub(1).max(open + 1)]
                        .iter()
                        .collect();
                    out.extend(
                        inner
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_string),
                    );
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Every label matcher in every `{...}` block of `expr`.
pub fn matchers(expr: &str) -> Vec<Matcher> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => {
                let end = skip_block(&chars, i, '{', '}');
                let inner: String = chars[i + 1..end.saturating_sub(1).max(i + 1)]
                    .iter()
                    .collect();
                out.extend(parse_matchers(&inner));
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

fn parse_matchers(inner: &str) -> Vec<Matcher> {
    let chars: Vec<char> = inner.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if label.is_empty() || op.is_empty() || i >= chars.len() {
            break;
        }
        let end = skip_string(&chars, i);
        let value: String = chars[(i + 1).min(end)..end.saturating_sub(1).max(i + 1)]
            .iter()
            .collect();
        out.push(Matcher { label, op, value });
        i = end;
    }
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn next_is_digit(chars: &[char], i: usize) -> bool {
    chars.get(i + 1).is_some_and(char::is_ascii_digit)
}

fn next_non_space(chars: &[char], mut i: usize) -> Option<usize> {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    (i < chars.len()).then_some(i)
}

/// The index after the string starting at `i` (its quote), escapes honoured.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        if chars[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if chars[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    chars.len()
}

/// The index after the block opened at `i`, nesting and strings honoured.
fn skip_block(chars: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j < chars.len() {
        let c = chars[j];
        if matches!(c, '"' | '\'' | '`') {
            j = skip_string(chars, j);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return j + 1;
            }
        }
        j += 1;
    }
    chars.len()
}
