//! The `siplb` binary: the command line lives in the library ([`siplb::cli`]).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    siplb::cli::main()
}
