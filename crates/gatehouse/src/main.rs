//! The `gatehouse` binary: parses the command line and wires the crates together. It holds no
//! gateway logic of its own.

mod access;
mod audit;
mod cli;
mod client;
mod commands;
mod exec;
mod login;
mod policy;
mod replay;
mod reviews;
mod serve;
mod table;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
