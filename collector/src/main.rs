//! `hubwatch-collector`: parses flags and runs the library's command line.
#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    hubwatch_collector::cli::main()
}
