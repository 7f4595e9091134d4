//! The charts are well-formed XML (checked by a small strict parser here),
//! self-contained, escaped, and never show NaN or panic.

use proptest::prelude::*;

use super::*;

/// Element names of `xml` in document order, or why it is not well-formed:
/// one root, tags balanced, attributes quoted, only the five XML entities,
/// no `<` or `&` loose in text or attribute values.
fn elements(xml: &str) -> Result<Vec<String>, String> {
    let bytes = xml.as_bytes();
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut roots = 0;
    let mut i = 0;
    let check_text = |text: &str| -> Result<(), String> {
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            let tail = &rest[at..];
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| tail.starts_with(e));
            if !ok {
                return Err(format!("bad entity at {tail:.10}"));
            }
            rest = &tail[1..];
        }
        if text.contains('<') {
            return Err("loose <".into());
        }
        Ok(())
    };
    while i < bytes.len() {
        if bytes[i] != b'<' {
            let end = xml[i..].find('<').map_or(xml.len(), |e| i + e);
            let text = &xml[i..end];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err("text outside the root".into());
            }
            check_text(text)?;
            i = end;
            continue;
        }
        // A tag: find its end outside quotes.
        let mut j = i + 1;
        let mut quote: Option<u8> = None;
        while j < bytes.len() {
            match (quote, bytes[j]) {
                (None, b'"') | (None, b'\'') => quote = Some(bytes[j]),
                (Some(q), c) if c == q => quote = None,
                (Some(_), b'<') => return Err("< in attribute".into()),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        if j >= bytes.len() {
            return Err("unterminated tag".into());
        }
        let tag = &xml[i + 1..j];
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else {
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
                return Err(format!("bad name {name:?}"));
            }
            // Attributes: name="value" pairs.
            let mut rest = body[name.len()..].trim_start();
            while !rest.is_empty() {
                let eq = rest.find('=').ok_or("attribute without =")?;
                let q = rest[eq + 1..]
                    .chars()
                    .next()
                    .ok_or("attribute without value")?;
                if q != '"' {
                    return Err("unquoted attribute".into());
                }
                let close = rest[eq + 2..].find('"').ok_or("unterminated value")?;
                check_text(&rest[eq + 2..eq + 2 + close])?;
                rest = rest[eq + 2 + close + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        i = j + 1;
    }
    if !stack.is_empty() {
        return Err(format!("unclosed {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} roots"));
    }
    Ok(names)
}

fn days() -> StackedBars {
    StackedBars {
        title: "Server-hours per day".into(),
        x_label: "day".into(),
        y_label: "server-hours".into(),
        categories: (1..=30).map(|d| format!("2026-11-{d:02}")).collect(),
        series: vec![
            Series {
                name: "hub-a".into(),
                values: (0..30).map(f64::from).collect(),
            },
            Series {
                name: "hub-b".into(),
                values: vec![2.5; 30],
            },
        ],
    }
}

fn fleet() -> BarsAndLine {
    BarsAndLine {
        title: "Operations cost per member".into(),
        x_label: "month".into(),
        categories: vec!["2026-09".into(), "2026-10".into(), "2026-11".into()],
        bars: Series {
            name: "members".into(),
            values: vec![3.0, 4.0, 6.0],
        },
        line: Series {
            name: "cost per member (EUR)".into(),
            values: vec![3000.0, 2250.0, 1500.0],
        },
    }
}

#[test]
fn stacked_bars_are_well_formed_titled_and_draw_every_non_zero_bar() {
    let svg = stacked_bars(&days());
    let names = elements(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert_eq!(names[0], "svg");
    assert_eq!(names[1], "title");
    assert!(svg.contains("<title>Server-hours per day</title>"));
    // Day 1 has hub-a 0 (no bar) and hub-b 2.5; the other 29 days have both.
    let bars = svg.matches(r##"fill="#0072b2"><title>"##).count()
        + svg.matches(r##"fill="#e69f00"><title>"##).count();
    assert_eq!(bars, 29 + 30);
    assert!(svg.contains("server-hours") && svg.contains(">day<"));
    assert!(svg.contains(r#"width="720" height="360""#));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn bars_and_line_are_well_formed_with_both_axes() {
    let svg = bars_and_line(&fleet());
    elements(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert_eq!(svg.matches("<polyline").count(), 1);
    assert_eq!(svg.matches("<circle").count(), 3);
    assert!(svg.contains(">members<") && svg.contains(">cost per member (EUR)<"));
    // The tallest bar (6 of a scale of 10) reaches 60 % of the plot height.
    assert!(svg.contains("members 2026-11: 6"));
}

#[test]
fn nothing_external_is_referenced() {
    for svg in [stacked_bars(&days()), bars_and_line(&fleet())] {
        for forbidden in [
            "<script",
            "<style",
            "href",
            "@import",
            "url(",
            "<image",
            "<foreignObject",
        ] {
            assert!(!svg.contains(forbidden), "{forbidden} in the chart");
        }
        // The only URL is the SVG namespace.
        assert_eq!(svg.matches("http").count(), 1);
    }
}

#[test]
fn text_is_escaped() {
    let mut chart = days();
    chart.title = r#"<script>alert("x")</script> & 'q'"#.into();
    chart.series[0].name = "a<b>&c".into();
    chart.categories[0] = "</svg>".into();
    let svg = stacked_bars(&chart);
    elements(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert!(svg.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &apos;q&apos;"));
    assert!(!svg.contains("<script"));
    assert!(svg.contains("a&lt;b&gt;&amp;c"));
}

#[test]
fn empty_zero_and_huge_charts_render_without_nan() {
    let empty = StackedBars {
        title: String::new(),
        x_label: String::new(),
        y_label: String::new(),
        categories: vec![],
        series: vec![],
    };
    let zeros = StackedBars {
        series: vec![Series {
            name: "z".into(),
            values: vec![0.0; 30],
        }],
        ..days()
    };
    let mut huge = fleet();
    huge.bars.values = vec![f64::MAX, f64::INFINITY, f64::NAN];
    huge.line.values = vec![1e300, -5.0, f64::MAX];
    for svg in [
        stacked_bars(&empty),
        stacked_bars(&zeros),
        bars_and_line(&huge),
    ] {
        elements(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }
    assert_eq!(nice_max(0.0), 1.0);
    assert_eq!(nice_max(7.0), 10.0);
    assert_eq!(nice_max(1500.0), 2000.0);
    assert_eq!(short(1_234_000.0), "1.23M");
}

proptest! {
    #[test]
    fn any_input_renders_well_formed_without_nan(
        title in ".{0,40}",
        names in proptest::collection::vec(".{0,20}", 0..5),
        categories in proptest::collection::vec(".{0,15}", 0..40),
        values in proptest::collection::vec(proptest::num::f64::ANY, 0..60),
    ) {
        let series: Vec<Series> = names
            .iter()
            .map(|n| Series { name: n.clone(), values: values.clone() })
            .collect();
        let bars = StackedBars {
            title: title.clone(),
            x_label: "x".into(),
            y_label: "y".into(),
            categories: categories.clone(),
            series,
        };
        let line = BarsAndLine {
            title,
            x_label: "x".into(),
            categories,
            bars: Series { name: "b".into(), values: values.clone() },
            line: Series { name: "l".into(), values: values.iter().rev().copied().collect() },
        };
        for svg in [stacked_bars(&bars), bars_and_line(&line)] {
            prop_assert!(elements(&svg).is_ok(), "{:?}", elements(&svg));
            prop_assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }
}
