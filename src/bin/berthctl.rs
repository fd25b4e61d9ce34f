fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(berth::cli::main())
}
