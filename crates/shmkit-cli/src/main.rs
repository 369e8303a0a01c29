//! The `shmkit` binary: everything is in the library, [`shmkit_cli::run`].

fn main() {
    std::process::exit(shmkit_cli::run(std::env::args_os()));
}
