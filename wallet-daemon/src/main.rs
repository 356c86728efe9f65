//! `payme-wallet`: not built yet. It says so and exits non-zero rather than pretend to work.

fn main() -> std::process::ExitCode {
    eprintln!("payme-wallet: not implemented yet in this version of payme (see README.md, Status)");
    std::process::ExitCode::from(2)
}
