//! `lanyard`: parse arguments, run, exit with the command's status.

use clap::Parser;

fn main() {
    let cli = lanyard_supervisor::cli::Cli::parse();
    std::process::exit(lanyard_supervisor::cli::run(cli));
}
