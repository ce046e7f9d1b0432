use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = leadpipe::Cli::parse();
    match leadpipe::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is_closed_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "leadpipe: {}",
                leadpipe::render::outside_text(&err.to_string(), 4000)
            );
            ExitCode::from(err.exit_code())
        }
    }
}
