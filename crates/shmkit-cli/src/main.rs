//! `shmkit`: see and decode POSIX shared memory on this machine, and serve
//! a shared memory manager.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shmkit::SharedMemory;

mod hexdump;
mod serve;

#[derive(Parser)]
#[command(
    name = "shmkit",
    version,
    about = "See and decode POSIX shared memory segments, and serve a shared memory manager"
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
    /// Run a standalone shared memory manager, wire-compatible with Python's
    /// multiprocessing.managers.SharedMemoryManager, until SIGTERM, SIGINT or
    /// a `shutdown` request; it unlinks every segment it tracks when it stops.
    ///
    /// Prints `address:`, `python-address:` (as Python spells it) and
    /// `authkey-file:` lines on stdout, and logs one line per connection on
    /// stderr. A Python client connects with
    /// `SharedMemoryManager(address, open(authkey_file, 'rb').read()).connect()`.
    Serve {
        /// Where to listen: `HOST:PORT` (TCP), `@NAME` (abstract Unix
        /// socket), or a Unix socket path (made with mode 0600). Default: a
        /// socket `listener` in a new private directory (mode 0700)
        /// `$TMPDIR/shmkit-serve-XXXXXXXX`.
        #[arg(long)]
        address: Option<String>,
        /// The file holding the authentication key (its bytes, exactly). If
        /// it does not exist, 32 random bytes are written to it (mode 0600).
        /// Default: a new random key in the file `authkey` of a new private
        /// directory (mode 0700) `$TMPDIR/shmkit-serve-XXXXXXXX`, removed
        /// when the server stops.
        #[arg(long)]
        authkey_file: Option<std::path::PathBuf>,
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
        Command::Serve {
            address,
            authkey_file,
        } => serve::run(serve::Args {
            address,
            authkey_file,
        }),
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
