//! The tables the CLI prints (`wisp sprite list`, `tasks list`, `image list`, ...):
//! each column as wide as its widest cell or heading, so a heading always stands
//! over its cells whatever they hold. (Fixed widths in format strings shifted a
//! row under any longer value, and a JSON value printed with a width ignored it.)

/// How a column's cells line up under its heading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers: their last digits under the heading's last letter.
    Right,
}

/// A table being filled, printed by [`Table::render`].
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one cell per column (missing cells are empty, extra ones dropped).
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| c.to_string().replace(['\n', '\t'], " "))
            .collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// The heading line and the rows, columns two spaces apart, each line
    /// without trailing spaces and ending in a newline.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (heading, _))| {
                self.rows
                    .iter()
                    .map(|r| width(&r[i]))
                    .chain([width(heading)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let headings: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headings).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints [`Table::render`] to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_stand_over_their_cells_whatever_their_width() {
        let mut t = Table::new(&[
            ("TASK", Align::Left),
            ("TTL", Align::Right),
            ("EXPIRES IN", Align::Right),
            ("DESCRIPTION", Align::Left),
        ]);
        t.row([
            "a-much-longer-task-name-than-usual",
            "3600s",
            "12s",
            "build",
        ]);
        t.row(["b", "30s", "29s", "multi\nline"]);
        t.row(["é", "5s", "", ""]);
        assert_eq!(
            t.render(),
            "TASK                                  TTL  EXPIRES IN  DESCRIPTION\n\
             a-much-longer-task-name-than-usual  3600s         12s  build\n\
             b                                     30s         29s  multi line\n\
             é                                      5s\n"
        );
    }

    #[test]
    fn a_table_without_rows_is_its_heading() {
        let t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        assert_eq!(t.render(), "NAME  SIZE\n");
    }
}
