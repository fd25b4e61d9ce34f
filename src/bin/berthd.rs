fn main() -> std::process::ExitCode {
    match berth::daemon::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            berth::daemon::report(&e);
            eprintln!("berthd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
