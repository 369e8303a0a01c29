//! The `shmkit` command: see, decode and clean POSIX shared memory on this
//! machine, and serve a shared memory manager.
//!
//! It is a library so that the Python package can run the very same command
//! (`python -m shmkit …`, and the `shmkit` script that `pip install`
//! makes): [`run`] takes the arguments and returns the exit status.
//!
//! ```
//! // Help goes to stdout and exits 0; an unknown command is a usage error.
//! assert_eq!(shmkit_cli::run(["shmkit", "--version"]), shmkit_cli::EXIT_OK);
//! assert_eq!(shmkit_cli::run(["shmkit", "frobnicate"]), shmkit_cli::EXIT_USAGE);
//! assert_eq!(shmkit_cli::run(["shmkit", "show", "a/b"]), shmkit_cli::EXIT_ERROR);
//! ```

#![warn(missing_docs)]

use std::ffi::OsString;

use clap::{Parser, Subcommand};

mod clean;
mod demo;
mod hexdump;
pub mod inspect;
mod ls;
mod out;
mod serve;
mod show;
mod show_array;
mod show_object;
mod show_queue;

/// Exit status: the command did what was asked.
pub const EXIT_OK: i32 = 0;
/// Exit status: an error, such as a bad name, a missing segment or a
/// permission denied; the message says which.
pub const EXIT_ERROR: i32 = 1;
/// Exit status: the command line could not be parsed.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: `rm` left a segment alone because a live process uses it, or
/// because whether one does cannot be told.
pub const EXIT_REFUSED: i32 = 3;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  an error: a bad name, a missing segment, a permission denied, ...
  2  a usage error (bad arguments)
  3  rm left a segment alone: a live process uses it, or that cannot be told";

#[derive(Parser)]
#[command(
    name = "shmkit",
    version,
    about = "See, decode and clean POSIX shared memory segments, and serve a shared memory manager",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Say more: notes on what could not be inspected, and why.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every segment in /dev/shm: size, mode, owner, age, the processes
    /// that use it, the shmkit processes tracking it (managers among them:
    /// `shmkit-manager`, `shmkit serve`), its state, and what it holds.
    /// Names and command names that hold control characters, bytes that are
    /// not UTF-8, spaces, quotes or backslashes are shown quoted and escaped.
    ///
    /// States: "in use"; "idle" (unused, but a live shmkit process or
    /// manager tracks it and will unlink it); "leaked"
    /// (every user gone, nobody will unlink it); "unknown" (see below).
    ///
    /// Nothing is disturbed: segments are read with pread on a read-only
    /// descriptor, never mapped, locked or tracked. Users come from
    /// /proc/*/maps, /proc/*/fd and /proc/locks; where other users'
    /// processes cannot be read (without root), a segment nobody was seen
    /// using is "unknown", not "leaked". Segments tracked by CPython's own
    /// resource tracker are never shown as tracked: it keeps their names in
    /// its private memory.
    #[command(after_help = EXIT_CODES)]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decode a ShareableList (each item's index, type, format, slot size
    /// and value), or hexdump a segment that holds none.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// The segment's name, with or without the leading slash.
        name: String,
        /// Hexdump even a ShareableList.
        #[arg(long)]
        hex: bool,
        /// Hexdump from this byte on (implies --hex).
        #[arg(long)]
        offset: Option<u64>,
        /// Hexdump this many bytes (implies --hex; default: up to 4096, or
        /// the rest).
        #[arg(long)]
        length: Option<usize>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Unlink the named segments, each only if no live process uses it
    /// (or even then, with --force).
    ///
    /// Each is checked on a fresh read-only descriptor: an exclusive
    /// non-blocking flock (which fails while any shmkit handle has it), then,
    /// holding it, no process in /proc maps it or holds it open, and the name
    /// still refers to the file that was checked. A segment in use is left
    /// alone with a message naming its processes.
    #[command(after_help = EXIT_CODES)]
    Rm {
        /// The segments' names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Unlink them even while in use, as `rm` does a file: the name goes
        /// now, and the processes that map or hold a segment (each is named)
        /// keep its memory until they let go of it.
        #[arg(short, long)]
        force: bool,
    },
    /// Unlink leaked segments: those that no live process maps, holds open
    /// or locks, and no live shmkit process tracks. Each is checked again as
    /// `rm` checks it just before it is unlinked.
    ///
    /// With NAMEs or --prefix, only those segments are considered.
    #[command(after_help = EXIT_CODES)]
    Gc {
        /// Consider only these segments.
        names: Vec<String>,
        /// Consider only segments whose name starts with PREFIX (repeatable).
        #[arg(long, value_name = "PREFIX")]
        prefix: Vec<String>,
        /// Only list what would be unlinked.
        #[arg(long)]
        dry_run: bool,
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
    /// Run the Python demo (worker processes sharing one large buffer,
    /// against pickling): `python3 -m shmkit demo ARGS`, or $SHMKIT_PYTHON
    /// instead of python3. It needs the shmkit Python package and numpy;
    /// `shmkit demo --help` lists its options.
    #[command(disable_help_flag = true)]
    Demo {
        /// Passed to the demo as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Runs the `shmkit` command with `args` (the first is the program's name,
/// as in [`std::env::args_os`]) and returns its exit status: [`EXIT_OK`],
/// [`EXIT_ERROR`], [`EXIT_USAGE`] or [`EXIT_REFUSED`] (or the demo's own).
///
/// It prints its output and messages itself, on this process's stdout and
/// stderr, and never panics on bad input: every failure is a one-line
/// message and a non-zero status.
///
/// ```
/// let status = shmkit_cli::run(["shmkit", "rm", "surely_no_such_segment"]);
/// assert_eq!(status, shmkit_cli::EXIT_ERROR);
/// ```
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0, errors to stderr
            // with status 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        Command::Ls { json } => ls::run(json, cli.verbose),
        Command::Show {
            name,
            hex,
            offset,
            length,
            json,
        } => show::run(&show::Args {
            name,
            hex,
            offset,
            length,
            json,
        }),
        Command::Rm { names, force } => clean::rm(&names, force),
        Command::Gc {
            names,
            prefix,
            dry_run,
        } => clean::gc(&names, &prefix, dry_run, cli.verbose),
        Command::Serve {
            address,
            authkey_file,
        } => match serve::run(serve::Args {
            address,
            authkey_file,
        }) {
            Ok(()) => EXIT_OK,
            Err(message) => out::fail(&message),
        },
        Command::Demo { args } => demo::run(&args),
    }
}
