//! `shmkit`: see and decode POSIX shared memory on this machine.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shmkit::SharedMemory;

mod hexdump;

#[derive(Parser)]
#[command(
    name = "shmkit",
    version,
    about = "See and decode POSIX shared memory segments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hexdump a byte range of a segment.
    Show {
        /// The segment's name, with or without the leading slash.
        name: String,
        /// First byte to show.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// How many bytes to show (default: up to 4096, or the rest).
        #[arg(long)]
        length: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Show {
            name,
            offset,
            length,
        } => show(&name, offset, length),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("shmkit: {message}");
            ExitCode::FAILURE
        }
    }
}

const DEFAULT_SHOW: usize = 4096;

fn show(name: &str, offset: usize, length: Option<usize>) -> Result<(), String> {
    let shm = SharedMemory::open(name).map_err(|e| e.to_string())?;
    let size = shm.size();
    if offset > size {
        return Err(format!(
            "offset {offset} is past the end of {:?} ({size} bytes)",
            shm.name()
        ));
    }
    let len = length.unwrap_or(DEFAULT_SHOW.min(size - offset));
    let bytes = shm.read_vec(offset, len).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: {size} bytes", shm.name());
    for line in hexdump::lines(&bytes, offset) {
        if writeln!(out, "{line}").is_err() {
            break; // a closed pipe (`| head`) is not an error
        }
    }
    Ok(())
}
