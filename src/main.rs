//! The `ctgrade` command line: parse, dispatch to [`cli`], and print an error at the edge.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::dispatch(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // One line, causes joined: grand-challenge shows users the last line of stderr.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
