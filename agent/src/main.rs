//! `hubwatch-agent`: parses flags and runs; everything else is in the library.

fn main() -> std::process::ExitCode {
    hubwatch_agent::cli::main()
}
