//! Self-contained SVG charts for the reports, with no IO: a stacked bar
//! chart ([`stacked_bars`], e.g. server-hours per day stacked by hub) and a
//! bars-and-line chart over periods ([`bars_and_line`], e.g. the number of
//! members as bars against operations cost per member as a line).
//!
//! The output is a fixed-size `<svg>` string with no external fonts, CSS,
//! scripts or links, an accessible `<title>` and `<desc>`, axis labels, and
//! every text escaped. Values that are not finite or are negative draw as
//! zero, an empty or all-zero chart draws its axes, and a huge value only
//! changes the scale: nothing here can produce `NaN` or panic.

use std::fmt::Write as _;

#[cfg(test)]
mod tests;

/// The chart's width, px.
pub const WIDTH: u32 = 720;
/// The chart's height, px.
pub const HEIGHT: u32 = 360;

// The plot area inside the chart: room on the left and right for the axis
// labels, at the top for the title and at the bottom for the categories and
// the legend.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 650.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 290.0;
const TICKS: u32 = 4;

/// Colours of the series in order (distinguishable in print and for the
/// common colour-vision deficiencies); repeated past the last.
const PALETTE: [&str; 8] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000",
];

/// One named series of values, one per category.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// One value per category; missing ones draw as zero, extra ones are
    /// ignored.
    pub values: Vec<f64>,
}

/// A bar chart whose bars stack every series.
#[derive(Debug, Clone, PartialEq)]
pub struct StackedBars {
    /// The title (also the accessible name).
    pub title: String,
    /// What the categories are (x axis), e.g. `day`.
    pub x_label: String,
    /// What the values are (y axis), e.g. `server-hours`.
    pub y_label: String,
    /// The categories, left to right.
    pub categories: Vec<String>,
    /// The stacked series, bottom to top.
    pub series: Vec<Series>,
}

/// Bars of one series with a line of another on its own axis (right).
#[derive(Debug, Clone, PartialEq)]
pub struct BarsAndLine {
    /// The title (also the accessible name).
    pub title: String,
    /// What the categories are (x axis), e.g. `month`.
    pub x_label: String,
    /// The categories, left to right.
    pub categories: Vec<String>,
    /// The bars; its name labels the left axis.
    pub bars: Series,
    /// The line; its name labels the right axis.
    pub line: Series,
}

/// Renders `chart` as a self-contained SVG document fragment.
pub fn stacked_bars(chart: &StackedBars) -> String {
    let n = chart.categories.len();
    let totals: Vec<f64> = (0..n)
        .map(|i| chart.series.iter().map(|s| value(s, i)).sum::<f64>())
        .collect();
    let max = nice_max(totals.iter().copied().fold(0.0, f64::max));
    let mut out = open(&chart.title, &describe_stacked(chart, &totals));
    axis(&mut out, max, LEFT, "end", &chart.y_label, -1.0);
    x_axis(&mut out, &chart.categories, &chart.x_label);
    let slot = slot_width(n);
    for i in 0..n {
        let mut base = 0.0;
        for (s_index, series) in chart.series.iter().enumerate() {
            let v = value(series, i);
            if v <= 0.0 {
                continue;
            }
            let y_top = y_of(base + v, max);
            let y_bottom = y_of(base, max);
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                LEFT + slot * i as f64 + slot * 0.15,
                y_top,
                slot * 0.7,
                (y_bottom - y_top).max(0.0),
                colour(s_index),
                escape(&format!(
                    "{} {}",
                    series.name,
                    category(chart.categories.get(i))
                )),
                short(v)
            );
            base += v;
        }
    }
    let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
    legend(&mut out, &names);
    out.push_str("</svg>");
    out
}

/// Renders `chart` as a self-contained SVG document fragment.
pub fn bars_and_line(chart: &BarsAndLine) -> String {
    let n = chart.categories.len();
    let bars: Vec<f64> = (0..n).map(|i| value(&chart.bars, i)).collect();
    let line: Vec<f64> = (0..n).map(|i| value(&chart.line, i)).collect();
    let bar_max = nice_max(bars.iter().copied().fold(0.0, f64::max));
    let line_max = nice_max(line.iter().copied().fold(0.0, f64::max));
    let desc = format!(
        "{} (bars, left axis) and {} (line, right axis) per {}: {}",
        chart.bars.name,
        chart.line.name,
        chart.x_label,
        chart
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} {} / {}", short(bars[i]), short(line[i])))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = open(&chart.title, &desc);
    axis(&mut out, bar_max, LEFT, "end", &chart.bars.name, -1.0);
    axis(&mut out, line_max, RIGHT, "start", &chart.line.name, 1.0);
    x_axis(&mut out, &chart.categories, &chart.x_label);
    let slot = slot_width(n);
    for (i, v) in bars.iter().enumerate() {
        if *v <= 0.0 {
            continue;
        }
        let y = y_of(*v, bar_max);
        let _ = write!(
            out,
            r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
            LEFT + slot * i as f64 + slot * 0.2,
            slot * 0.6,
            (BOTTOM - y).max(0.0),
            colour(0),
            escape(&format!(
                "{} {}: {}",
                chart.bars.name,
                category(chart.categories.get(i)),
                short(*v)
            ))
        );
    }
    if n > 0 {
        let points: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", centre(i, slot), y_of(*v, line_max)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            points.join(" "),
            colour(1)
        );
        for (i, v) in line.iter().enumerate() {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}</title></circle>"#,
                centre(i, slot),
                y_of(*v, line_max),
                colour(1),
                escape(&format!(
                    "{} {}: {}",
                    chart.line.name,
                    category(chart.categories.get(i)),
                    short(*v)
                ))
            );
        }
    }
    legend(
        &mut out,
        &[chart.bars.name.as_str(), chart.line.name.as_str()],
    );
    out.push_str("</svg>");
    out
}

/// Escapes `text` for XML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            '\u{FFFE}' | '\u{FFFF}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn open(title: &str, desc: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-family="sans-serif" font-size="11"><title>{}</title><desc>{}</desc><rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/><text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"##,
        escape(title),
        escape(desc),
        WIDTH / 2,
        escape(title)
    );
    out
}

fn describe_stacked(chart: &StackedBars, totals: &[f64]) -> String {
    format!(
        "{} per {}, stacked by {}: {}",
        chart.y_label,
        chart.x_label,
        chart
            .series
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        chart
            .categories
            .iter()
            .zip(totals)
            .map(|(c, t)| format!("{c} {}", short(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A vertical axis at `x` with ticks from 0 to `max` and its label rotated
/// beside it (`side` -1 left, 1 right).
fn axis(out: &mut String, max: f64, x: f64, anchor: &str, label: &str, side: f64) {
    let _ = write!(
        out,
        r##"<line x1="{x:.1}" y1="{TOP:.1}" x2="{x:.1}" y2="{BOTTOM:.1}" stroke="#444444"/>"##
    );
    for t in 0..=TICKS {
        let v = max * f64::from(t) / f64::from(TICKS);
        let y = y_of(v, max);
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#444444"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"##,
            x,
            x + 4.0 * side,
            x + 7.0 * side,
            y + 4.0,
            escape(&short(v))
        );
    }
    let lx = x + 55.0 * side;
    let ly = (TOP + BOTTOM) / 2.0;
    let _ = write!(
        out,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        escape(label)
    );
}

fn x_axis(out: &mut String, categories: &[String], label: &str) {
    let _ = write!(
        out,
        r##"<line x1="{LEFT:.1}" y1="{BOTTOM:.1}" x2="{RIGHT:.1}" y2="{BOTTOM:.1}" stroke="#444444"/>"##
    );
    let slot = slot_width(categories.len());
    // Label at most ~12 categories so the text never overlaps.
    let every = categories.len().div_ceil(12).max(1);
    for (i, c) in categories.iter().enumerate() {
        if i % every != 0 {
            continue;
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            centre(i, slot),
            BOTTOM + 14.0,
            escape(&truncate(c, 12))
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 30.0,
        escape(label)
    );
}

fn legend(out: &mut String, names: &[&str]) {
    // At most 6 entries fit in one row; more are summarised.
    let shown = names.len().min(6);
    for (i, name) in names.iter().take(shown).enumerate() {
        let x = LEFT + 100.0 * i as f64;
        let y = f64::from(HEIGHT) - 22.0;
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 9.0,
            colour(i),
            x + 14.0,
            escape(&truncate(name, 14))
        );
    }
    if names.len() > shown {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}">+{} more</text>"#,
            LEFT + 100.0 * shown as f64,
            f64::from(HEIGHT) - 22.0,
            names.len() - shown
        );
    }
}

/// The value of `series` at `i`: not finite or negative draws as zero.
fn value(series: &Series, i: usize) -> f64 {
    match series.values.get(i) {
        Some(v) if v.is_finite() && *v > 0.0 => *v,
        _ => 0.0,
    }
}

/// A round scale maximum at or above `max` (1, 2 or 5 × a power of ten); 1
/// for an empty or all-zero chart.
fn nice_max(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        let candidate = step * power;
        if candidate >= max && candidate.is_finite() {
            return candidate;
        }
    }
    // Only near f64::MAX: the value itself is its scale.
    max
}

fn y_of(v: f64, max: f64) -> f64 {
    let fraction = if max > 0.0 {
        (v / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    BOTTOM - (BOTTOM - TOP) * fraction
}

fn slot_width(n: usize) -> f64 {
    (RIGHT - LEFT) / n.max(1) as f64
}

fn centre(i: usize, slot: f64) -> f64 {
    LEFT + slot * (i as f64 + 0.5)
}

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn category(c: Option<&String>) -> &str {
    c.map_or("", String::as_str)
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(chars.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A compact number: up to three significant figures with k/M/G/T/P/E
/// suffixes, exponent form beyond.
fn short(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_string();
    }
    let abs = v.abs();
    for (scale, suffix) in [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ] {
        if abs >= scale * 1000.0 && suffix == "E" {
            return format!("{v:.2e}");
        }
        if abs >= scale {
            return format!("{}{suffix}", trim(v / scale));
        }
    }
    trim(v)
}

fn trim(v: f64) -> String {
    let text = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}
