//! The Markdown report: the [`document`](super::document) blocks as
//! headings, paragraphs and pipe tables (charts are left out).

use super::document::Block;

fn cell(text: &str) -> String {
    // A pipe or a newline would break the table row.
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Renders `blocks` as Markdown.
pub fn render(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                out.push_str(&"#".repeat(usize::from(*level)));
                out.push(' ');
                out.push_str(&cell(text));
                out.push_str("\n\n");
            }
            Block::Para(text) => {
                out.push_str(text);
                out.push_str("\n\n");
            }
            Block::Table(headers, rows) => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |\n",
                        cells
                            .iter()
                            .map(|c| cell(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                out.push_str(&line(headers));
                out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
                for row in rows {
                    out.push_str(&line(row));
                }
                out.push('\n');
            }
            Block::Chart(_) => {}
        }
    }
    out
}
