//! The html report: one self-contained page (inline CSS, inline SVG charts,
//! no script, no external URL) of the [`document`](super::document) blocks,
//! every text escaped, laid out to print well (`@media print`).

use super::document::Block;
use super::svg::escape;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
margin:2rem auto;max-width:60rem;color:#1a1a1a;line-height:1.4;padding:0 1rem}\
h1{font-size:1.6rem;border-bottom:2px solid #0072b2;padding-bottom:.3rem}\
h2{font-size:1.25rem;margin-top:2rem}h3{font-size:1.05rem}\
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}\
th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left}\
th{background:#eef3f8}td.n{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:1rem 0}svg{max-width:100%;height:auto}\
@media print{body{margin:0;max-width:none;font-size:10pt}h2{break-after:avoid}\
table,figure{break-inside:avoid}th{background:none}}";

/// Whether a cell reads as a figure (right-aligned).
fn numeric(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-')
        && !text.contains('(')
}

/// Renders `blocks` as an html page titled `title`.
pub fn render(title: &str, blocks: &[Block]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    );
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let level = (*level).clamp(1, 6);
                out.push_str(&format!("<h{level}>{}</h{level}>\n", escape(text)));
            }
            Block::Para(text) => out.push_str(&format!("<p>{}</p>\n", escape(text))),
            Block::Table(headers, rows) => {
                out.push_str("<table>\n<thead><tr>");
                for h in headers {
                    out.push_str(&format!("<th>{}</th>", escape(h)));
                }
                out.push_str("</tr></thead>\n<tbody>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for c in row {
                        let class = if numeric(c) { " class=\"n\"" } else { "" };
                        out.push_str(&format!("<td{class}>{}</td>", escape(c)));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
            // svg.rs escapes its own text and emits no link or script.
            Block::Chart(svg) => out.push_str(&format!("<figure>{svg}</figure>\n")),
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}
