//! How answers are shown: tables for people (the default on a terminal), JSON for programs
//! (the default when standard output is a pipe or a file), JSON lines for streams; colours
//! only on a terminal, never with `--no-color` or `NO_COLOR`.

pub(crate) mod human;
pub(crate) mod tables;

use std::io::{IsTerminal, Write};

use clap::ValueEnum;
use comfy_table::{Attribute, Cell, Color, ContentArrangement, Table, presets};
use kagzi_proto::RunStatus;
use serde::Serialize;

use crate::error::{Error, Result};

/// Tables are fitted to terminals at least this wide, and left as wide as they are on
/// narrower ones.
const MIN_FITTED_WIDTH: u16 = 40;

/// An output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Tables and short messages, for people.
    Table,
    /// One JSON document: the protocol's types, pretty-printed.
    Json,
    /// JSON lines: one compact JSON value per line (one per item of a list).
    Jsonl,
}

/// Where and how a command writes what it has to say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    format: Format,
    color: bool,
}

/// A colour for text outside tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paint {
    /// Success.
    Green,
    /// Failure.
    Red,
    /// Cancelled, skipped, a warning.
    Yellow,
    /// In progress.
    Cyan,
    /// Suspended.
    Magenta,
    /// Less important.
    Dim,
    /// Headings.
    Bold,
}

impl Paint {
    fn ansi(self) -> &'static str {
        match self {
            Paint::Green => "32",
            Paint::Red => "31",
            Paint::Yellow => "33",
            Paint::Cyan => "36",
            Paint::Magenta => "35",
            Paint::Dim => "2",
            Paint::Bold => "1",
        }
    }

    fn table_color(self) -> Option<Color> {
        match self {
            Paint::Green => Some(Color::Green),
            Paint::Red => Some(Color::Red),
            Paint::Yellow => Some(Color::Yellow),
            Paint::Cyan => Some(Color::Cyan),
            Paint::Magenta => Some(Color::Magenta),
            Paint::Dim => Some(Color::DarkGrey),
            Paint::Bold => None,
        }
    }

    /// The colour a run status is shown in.
    pub(crate) fn status(status: RunStatus) -> Option<Paint> {
        match status {
            RunStatus::Completed => Some(Paint::Green),
            RunStatus::Failed => Some(Paint::Red),
            RunStatus::Cancelled => Some(Paint::Yellow),
            RunStatus::Running => Some(Paint::Cyan),
            RunStatus::Sleeping | RunStatus::Waiting => Some(Paint::Magenta),
            _ => None,
        }
    }
}

impl Output {
    /// The output for this process: `requested`, else a table on a terminal and JSON
    /// otherwise; colour when standard output is a terminal, unless `no_color` or the
    /// `NO_COLOR` environment variable (any non-empty value) says no.
    pub(crate) fn detect(requested: Option<Format>, no_color: bool) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let format = requested.unwrap_or(if terminal {
            Format::Table
        } else {
            Format::Json
        });
        let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Output {
            format,
            color: terminal && !no_color && !no_color_env,
        }
    }

    /// The chosen format.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Whether answers are shown as tables and messages.
    pub(crate) fn is_table(&self) -> bool {
        self.format == Format::Table
    }

    /// Writes `value` as JSON: pretty for `json`, on one line for `jsonl`.
    ///
    /// # Errors
    /// When standard output cannot be written.
    pub(crate) fn json(&self, value: &impl Serialize) -> Result<()> {
        let text = match self.format {
            Format::Jsonl => serde_json::to_string(value),
            Format::Json | Format::Table => serde_json::to_string_pretty(value),
        }
        .map_err(|e| Error::io("standard output", std::io::Error::other(e)))?;
        self.print(&text)
    }

    /// One answer: as JSON (`value`) or, for a table, the text `render` makes.
    ///
    /// # Errors
    /// When standard output cannot be written.
    pub(crate) fn one(
        &self,
        value: &impl Serialize,
        render: impl FnOnce() -> String,
    ) -> Result<()> {
        match self.format {
            Format::Table => self.print(&render()),
            Format::Json | Format::Jsonl => self.json(value),
        }
    }

    /// A list: `whole` as one JSON document (the page), each of `items` on its own line
    /// for `jsonl`, or the table `render` makes (a note when there are no items).
    ///
    /// # Errors
    /// When standard output cannot be written.
    pub(crate) fn list<T: Serialize>(
        &self,
        whole: &impl Serialize,
        items: &[T],
        none: &str,
        render: impl FnOnce() -> Table,
    ) -> Result<()> {
        match self.format {
            Format::Json => self.json(whole),
            Format::Jsonl => items.iter().try_for_each(|item| self.json(item)),
            Format::Table if items.is_empty() => self.print(none),
            Format::Table => self.print(&render().trim_fmt()),
        }
    }

    /// Writes `text` and a newline to standard output.
    ///
    /// # Errors
    /// When standard output cannot be written (a closed pipe, too).
    pub(crate) fn print(&self, text: &str) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("standard output", e))
    }

    /// Writes `text` and a newline to standard error (notes, prompts, progress).
    pub(crate) fn note(&self, text: &str) {
        eprintln!("{text}");
    }

    /// A new table with these column headers, in the house style: no borders, headers in
    /// capitals, fitted to the terminal's width.
    pub(crate) fn table(&self, headers: &[&str]) -> Table {
        let mut table = Table::new();
        // Fitted to a terminal only when its width is known and sensible: a terminal that
        // says it is 0 columns wide (some pseudo-terminals) would get one letter per line.
        let arrangement = match table.width() {
            Some(width) if width >= MIN_FITTED_WIDTH => ContentArrangement::Dynamic,
            _ => ContentArrangement::Disabled,
        };
        table
            .load_style(presets::NOTHING)
            .set_content_arrangement(arrangement)
            .set_header(headers.iter().map(|h| {
                let cell = Cell::new(h.to_uppercase());
                if self.color {
                    cell.add_attribute(Attribute::Bold)
                } else {
                    cell
                }
            }));
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        table
    }

    /// A table cell for `text`, in `paint` when colours are on.
    pub(crate) fn cell(&self, text: impl ToString, paint: Option<Paint>) -> Cell {
        let cell = Cell::new(text.to_string());
        match paint {
            Some(paint) if self.color => match paint.table_color() {
                Some(color) => cell.fg(color),
                None => cell.add_attribute(Attribute::Bold),
            },
            _ => cell,
        }
    }

    /// A table cell for a run status, in its colour.
    pub(crate) fn status_cell(&self, status: RunStatus) -> Cell {
        self.cell(status, Paint::status(status))
    }

    /// `text` in `paint`, when colours are on.
    pub(crate) fn paint(&self, text: impl std::fmt::Display, paint: Option<Paint>) -> String {
        match paint {
            Some(paint) if self.color => format!("\x1b[{}m{text}\x1b[0m", paint.ansi()),
            _ => text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(format: Format) -> Output {
        Output {
            format,
            color: false,
        }
    }

    #[test]
    fn tables_have_capital_headers_and_no_borders() {
        let out = plain(Format::Table);
        let mut table = out.table(&["id", "status"]);
        table.add_row(vec![
            out.cell("r1", None),
            out.status_cell(RunStatus::Failed),
        ]);
        let text = table.trim_fmt();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["ID  STATUS", "r1  failed"]);
    }

    #[test]
    fn colour_is_only_added_when_on() {
        let mut out = plain(Format::Table);
        assert_eq!(out.paint("ok", Some(Paint::Green)), "ok");
        out.color = true;
        assert_eq!(out.paint("ok", Some(Paint::Green)), "\x1b[32mok\x1b[0m");
        assert_eq!(out.paint("ok", None), "ok");
    }
}
