use clap::Parser;
use dlm_engine::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // Standard output was closed (`| head -0`): nobody reads the result; end quietly.
        Err(e) if e.downcast_ref::<cli::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            // One line for the user; the chain of causes joined, never a backtrace.
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            // One write, so that the lines of several ranks sharing a terminal do not interleave.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("error: {msg}\n").as_bytes());
            // Exit codes: 0 success, 2 any reported error (bad input, bad checkpoint, I/O),
            // 101 only for a bug (a panic).
            ExitCode::from(2)
        }
    }
}
