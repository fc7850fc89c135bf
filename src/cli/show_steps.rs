//! `sample --show-steps`: the canvases of every step on standard error, redrawn in place on a
//! terminal (one frame per step), or as plain lines when standard error is a file or a pipe.

use std::io::{IsTerminal, Write};

pub struct StepView {
    tty: bool,
    /// Columns a line may take on the terminal: a wrapped line would break the redraw.
    width: usize,
    /// Lines of the frame on screen, to move back over.
    shown: usize,
}

impl StepView {
    pub fn new() -> Self {
        let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(160usize).max(20);
        StepView { tty: std::io::stderr().is_terminal(), width, shown: 0 }
    }

    /// Shows the lines of step `step`; a step 1 starts a new frame below the last (a new batch).
    pub fn frame(&mut self, step: usize, lines: &[String]) {
        let mut err = std::io::stderr().lock();
        // Failing to draw must not stop decoding.
        let _ = if self.tty { self.redraw(&mut err, step, lines) } else { lines.iter().try_for_each(|l| writeln!(err, "{l}")) };
    }

    fn redraw(&mut self, out: &mut impl Write, step: usize, lines: &[String]) -> std::io::Result<()> {
        if step > 1 && self.shown > 0 {
            // Back to the frame's first line.
            write!(out, "\x1b[{}F", self.shown)?;
        }
        for l in lines {
            let cut: String = l.chars().take(self.width - 1).collect();
            writeln!(out, "\x1b[2K{cut}")?;
        }
        self.shown = lines.len();
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_frame_moves_back_over_the_last_one_and_cuts_long_lines() {
        let mut v = StepView { tty: true, width: 8, shown: 0 };
        let mut out = Vec::new();
        v.redraw(&mut out, 1, &["abcdefghij".into(), "xy".into()]).unwrap();
        v.redraw(&mut out, 2, &["12".into(), "34".into()]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "\x1b[2Kabcdefg\n\x1b[2Kxy\n\x1b[2F\x1b[2K12\n\x1b[2K34\n");
        // Step 1 of the next batch starts below.
        let mut out = Vec::new();
        v.redraw(&mut out, 1, &["z".into()]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "\x1b[2Kz\n");
    }
}
