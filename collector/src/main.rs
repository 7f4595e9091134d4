//! `hubwatch-collector`: parses flags and runs the library's command line.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    hubwatch_collector::cli::main()
}
