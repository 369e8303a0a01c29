//! `shm-floor`: the raw-syscall floor of shared-memory create and attach.
//!
//! Each workload is the bare sequence of system calls (made with rustix, as
//! shmkit makes them, but without the shmkit crate: no name validation, no
//! `String` paths, no error mapping), run in a loop. The time per operation
//! is what no implementation on this kernel can beat, so a binding's time
//! divided by it says how much the binding itself costs.
//!
//! ```text
//! shm-floor [--iters N] [--batches K] [--warmup W] [--size BYTES]
//!           [--workload NAME[,NAME...]] [--attach-name NAME]
//!           [--clock wall|cpu] [--list]
//! ```
//!
//! Prints one JSON object per workload on its own line (stdout):
//! `{"name":…,"iterations":N,"batches":K,"median_ns":…,"min_ns":…,
//! "max_ns":…,"batch_ns":[…],…}`, where `iterations` is per batch and the
//! `*_ns` figures are nanoseconds per operation (a batch's mean). The clock
//! is the monotonic wall clock, or with `--clock cpu` this process's CPU
//! time (user + system), which leaves out the time other processes had the
//! CPU: steadier on a busy machine, blind to waiting.
//!
//! Every segment it makes is unlinked before it exits, also when a system
//! call fails or SIGINT/SIGTERM/SIGHUP arrives (the loops stop at the next
//! iteration and clean up). Only SIGKILL can leave a segment behind.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use rustix::fs::{self, AtFlags, FallocateFlags, Mode, OFlags, CWD};
use rustix::io::{self, Errno};
use rustix::mm::{self, MapFlags, ProtFlags};
use rustix::rand::{self, GetRandomFlags};
use rustix::time::{clock_gettime, ClockId};
use serde::Serialize;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

const WORKLOADS: &[(&str, &str)] = &[
    (
        "create",
        "shmkit's create: getrandom name, openat(O_CREAT|O_EXCL), fallocate, \
         flock(LOCK_SH|LOCK_NB) (the in-use mark the leak tracker reads), mmap; \
         munmap, close, unlinkat",
    ),
    (
        "create_ftruncate",
        "the stdlib's essentials: getrandom name, openat(O_CREAT|O_EXCL), ftruncate, \
         fstat, mmap; munmap, close, unlinkat",
    ),
    (
        "create_cpython",
        "CPython 3.11-3.13's exact sequence minus the resource-tracker pipe writes: \
         create_ftruncate + a second fstat and a dup (F_DUPFD_CLOEXEC) that mmap.mmap makes",
    ),
    (
        "name",
        "name generation alone: getrandom(4 bytes) + hex (part of every create_* above)",
    ),
    (
        "attach",
        "shmkit's attach: openat, fstat, flock(LOCK_SH|LOCK_NB), mmap(st_size); munmap, close",
    ),
    (
        "attach_touch",
        "attach + a read of byte 0 (the page fault a first access costs)",
    ),
    (
        "attach_cpython",
        "CPython's attach minus the resource tracker: openat, fstat, fstat, dup, mmap; \
         close(dup), munmap, close",
    ),
];

/// A flag that SIGHUP, SIGINT and SIGTERM set; every loop checks it once per
/// iteration.
fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGHUP, SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

#[derive(Debug)]
enum Failure {
    Sys(&'static str, Errno),
    Stopped,
    Usage(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Sys(op, e) => write!(f, "{op}: {e}"),
            Failure::Stopped => write!(f, "stopped by a signal"),
            Failure::Usage(msg) => write!(f, "{msg}"),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn sys(op: &'static str) -> impl FnOnce(Errno) -> Failure {
    move |e| Failure::Sys(op, e)
}

/// A NUL-terminated `/dev/shm/NAME` on the stack, so that building the path
/// costs no allocation (the floor has none; shmkit allocates one `String`).
#[derive(Clone)]
struct ShmPath {
    buf: [u8; 9 + 255 + 1],
    len: usize,
}

const SHM_DIR: &[u8] = b"/dev/shm/";

impl ShmPath {
    fn new(name: &str) -> Result<Self> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.len() > 255 || name.contains('/') || name.contains('\0') {
            return Err(Failure::Usage(format!("bad segment name {name:?}")));
        }
        let mut p = ShmPath {
            buf: [0; 9 + 255 + 1],
            len: SHM_DIR.len() + name.len(),
        };
        p.buf[..SHM_DIR.len()].copy_from_slice(SHM_DIR);
        p.buf[SHM_DIR.len()..p.len].copy_from_slice(name.as_bytes());
        Ok(p)
    }

    /// `/dev/shm/psm_` + 8 hex digits from 4 bytes of getrandom(2), as
    /// CPython (`secrets.token_hex(4)`) and shmkit (`getrandom::fill`) make
    /// names.
    fn random() -> Result<Self> {
        let mut bytes = [0u8; 4];
        rand::getrandom(&mut bytes, GetRandomFlags::empty()).map_err(sys("getrandom"))?;
        let mut p = ShmPath {
            buf: [0; 9 + 255 + 1],
            len: SHM_DIR.len() + 12,
        };
        p.buf[..SHM_DIR.len()].copy_from_slice(SHM_DIR);
        p.buf[SHM_DIR.len()..SHM_DIR.len() + 4].copy_from_slice(b"psm_");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in bytes.iter().enumerate() {
            p.buf[SHM_DIR.len() + 4 + 2 * i] = HEX[usize::from(b >> 4)];
            p.buf[SHM_DIR.len() + 5 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        Ok(p)
    }

    fn as_cstr(&self) -> &CStr {
        // The buffer is zeroed past `len` and the name has no NUL.
        CStr::from_bytes_with_nul(&self.buf[..=self.len]).expect("path has its NUL")
    }

    fn display(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.len]).into_owned()
    }
}

const RW_NOFOLLOW: OFlags = OFlags::RDWR.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

fn open_new(path: &ShmPath) -> Result<OwnedFd> {
    fs::openat(
        CWD,
        path.as_cstr(),
        RW_NOFOLLOW | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(0o600),
    )
    .map_err(sys("openat(O_CREAT|O_EXCL)"))
}

fn open_existing(path: &ShmPath) -> Result<OwnedFd> {
    fs::openat(CWD, path.as_cstr(), RW_NOFOLLOW, Mode::empty()).map_err(sys("openat"))
}

/// Maps, optionally reads byte 0, unmaps.
fn map_unmap(fd: impl AsFd, len: usize, touch: bool) -> Result<()> {
    // SAFETY: a fresh mapping at an address the kernel picks; it is only
    // read through a volatile read below and unmapped before return.
    let ptr = unsafe {
        mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map_err(sys("mmap"))?;
    if touch {
        // SAFETY: `ptr` is a live mapping of at least one byte.
        std::hint::black_box(unsafe { std::ptr::read_volatile(ptr.cast::<u8>()) });
    }
    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { mm::munmap(ptr, len) }.map_err(sys("munmap"))
}

fn unlink(path: &ShmPath) -> Result<()> {
    fs::unlinkat(CWD, path.as_cstr(), AtFlags::empty()).map_err(sys("unlinkat"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Resize {
    /// shmkit: `fallocate(fd, 0, 0, size)`.
    Fallocate,
    /// stdlib: `ftruncate` then `fstat` (CPython reads the size back).
    FtruncateFstat,
    /// CPython exactly: `ftruncate`, `fstat` (shared_memory.py), `fstat` and
    /// `dup` (mmap.mmap), the dup closed at close().
    Cpython,
}

/// One create + close + unlink. Whatever fails after the open, the segment
/// is unlinked before the error is returned.
fn create_once(size: usize, resize: Resize) -> Result<()> {
    let path = ShmPath::random()?;
    let fd = open_new(&path)?;
    let body = || -> Result<()> {
        match resize {
            Resize::Fallocate => {
                fs::fallocate(&fd, FallocateFlags::empty(), 0, size as u64)
                    .map_err(sys("fallocate"))?;
                mark_in_use(&fd)
            }
            Resize::FtruncateFstat => {
                fs::ftruncate(&fd, size as u64).map_err(sys("ftruncate"))?;
                fs::fstat(&fd).map_err(sys("fstat"))?;
                Ok(())
            }
            Resize::Cpython => {
                fs::ftruncate(&fd, size as u64).map_err(sys("ftruncate"))?;
                fs::fstat(&fd).map_err(sys("fstat"))?;
                fs::fstat(&fd).map_err(sys("fstat"))?;
                let dup = io::fcntl_dupfd_cloexec(&fd, 0).map_err(sys("dup"))?;
                // CPython closes the dup before it unmaps; close order
                // inside one operation does not change the cost.
                drop(dup);
                Ok(())
            }
        }?;
        map_unmap(&fd, size, false)
    };
    let result = body();
    drop(fd);
    match (result, unlink(&path)) {
        (Err(e), _) => Err(e),
        // Someone else removed our segment (another test cleaning /dev/shm).
        (Ok(()), Err(Failure::Sys(_, Errno::NOENT))) => Err(Failure::Usage(format!(
            "{} vanished before unlink: something else is deleting /dev/shm entries \
             (run in a private /dev/shm; see bench/README.md)",
            path.display()
        ))),
        (Ok(()), other) => other,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attach {
    Plain,
    Touch,
    Cpython,
}

fn attach_once(path: &ShmPath, how: Attach) -> Result<()> {
    let fd = open_existing(path)?;
    let st = fs::fstat(&fd).map_err(sys("fstat"))?;
    let len = usize::try_from(st.st_size).map_err(|_| Failure::Usage("huge segment".into()))?;
    if len == 0 {
        return Err(Failure::Usage(format!("{} is empty", path.display())));
    }
    match how {
        Attach::Plain => mark_in_use(&fd).and_then(|()| map_unmap(&fd, len, false)),
        Attach::Touch => mark_in_use(&fd).and_then(|()| map_unmap(&fd, len, true)),
        Attach::Cpython => {
            fs::fstat(&fd).map_err(sys("fstat"))?;
            let dup = io::fcntl_dupfd_cloexec(&fd, 0).map_err(sys("dup"))?;
            let r = map_unmap(&fd, len, false);
            drop(dup);
            r
        }
    }
}

/// shmkit marks every open handle with a shared flock, which the leak
/// tracker probes (crates/shmkit/src/sys/linux.rs): part of its floor.
fn mark_in_use(fd: &impl std::os::fd::AsFd) -> Result<()> {
    fs::flock(fd, fs::FlockOperation::NonBlockingLockShared).map_err(sys("flock"))
}

fn name_once() -> Result<()> {
    std::hint::black_box(ShmPath::random()?);
    Ok(())
}

/// A segment this program made for the attach workloads; unlinked on drop,
/// so also on every error path and on panic.
struct OwnedSegment(ShmPath);

impl OwnedSegment {
    fn make(size: usize) -> Result<Self> {
        let path = ShmPath::new(&format!("shm_floor_{}", std::process::id()))?;
        let fd = open_new(&path)?;
        let seg = OwnedSegment(path);
        fs::fallocate(&fd, FallocateFlags::empty(), 0, size as u64).map_err(sys("fallocate"))?;
        // Write a byte, so the page exists as it does in any used segment.
        let one = [1u8];
        io::pwrite(&fd, &one, 0).map_err(sys("pwrite"))?;
        Ok(seg)
    }
}

impl Drop for OwnedSegment {
    fn drop(&mut self) {
        let _ = unlink(&self.0);
    }
}

/// Runs the bare system calls of each workload N times per batch, K batches,
/// after W untimed iterations; prints one JSON line per workload with the
/// median over batches of the mean ns/op.
#[derive(Parser)]
#[command(
    name = "shm-floor",
    override_usage = "shm-floor [--iters N] [--batches K] [--warmup W] [--size BYTES]\n\
        \x20                [--workload NAME[,NAME...]] [--attach-name NAME]\n\
        \x20                [--clock wall|cpu] [--list]",
    // The last of a repeated flag wins.
    args_override_self = true
)]
struct Args {
    /// Timed iterations per batch.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 2000)]
    iters: u64,
    /// Timed batches.
    #[arg(long, short = 'k', value_name = "K", default_value_t = 15)]
    batches: usize,
    /// Untimed iterations first [default: N/10, within 50..=1000].
    #[arg(long, value_name = "W")]
    warmup: Option<u64>,
    /// Segment size.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    size: usize,
    /// Workloads to run, comma-separated, or `all`.
    #[arg(
        long,
        short = 'w',
        value_name = "NAME[,NAME...]",
        value_parser = parse_workloads,
        default_value = "create,create_ftruncate,name,attach,attach_touch"
    )]
    workload: Workloads,
    /// Attach to this existing segment instead of making one.
    #[arg(long, value_name = "NAME")]
    attach_name: Option<String>,
    /// The wall clock (monotonic), or this process's CPU time.
    #[arg(long, value_enum, default_value_t = Clock::Wall)]
    clock: Clock,
    /// Print the workload names and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Clock {
    Wall,
    Cpu,
}

#[derive(Clone)]
struct Workloads(Vec<&'static str>);

fn parse_workloads(v: &str) -> std::result::Result<Workloads, String> {
    if v == "all" {
        return Ok(Workloads(WORKLOADS.iter().map(|(n, _)| *n).collect()));
    }
    v.split(',')
        .map(|w| {
            WORKLOADS
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n == w.trim())
                .ok_or_else(|| format!("unknown workload {w:?} (see --list)"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(Workloads)
}

struct Config {
    clock: Clock,
    iters: u64,
    batches: usize,
    warmup: u64,
    size: usize,
    workloads: Vec<&'static str>,
    attach_name: Option<String>,
}

/// The arguments, with the workloads described under `--help`; None when
/// `--list` printed them.
fn parse_args() -> Option<Config> {
    let mut workloads = String::from("Workloads:\n");
    for (name, what) in WORKLOADS {
        workloads.push_str(&format!("  {name:<17} {what}\n"));
    }
    let matches = Args::command().after_help(workloads).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if args.list {
        for (name, _) in WORKLOADS {
            println!("{name}");
        }
        return None;
    }
    let iters = args.iters.max(1);
    Some(Config {
        clock: args.clock,
        iters,
        batches: args.batches.max(1),
        warmup: args.warmup.unwrap_or((iters / 10).clamp(50, 1000)),
        size: args.size.max(1),
        workloads: args.workload.0,
        attach_name: args.attach_name,
    })
}

/// Runs `op` W times untimed, then K timed batches of N; returns the mean
/// ns/op of each batch.
fn measure(
    cfg: &Config,
    stop: &AtomicBool,
    mut op: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..cfg.warmup {
        if stop.load(Ordering::Relaxed) {
            return Err(Failure::Stopped);
        }
        op()?;
    }
    let clock = match cfg.clock {
        Clock::Wall => ClockId::Monotonic,
        Clock::Cpu => ClockId::ProcessCPUTime,
    };
    let now = || {
        let t = clock_gettime(clock);
        t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
    };
    let mut batches = Vec::with_capacity(cfg.batches);
    for _ in 0..cfg.batches {
        let start = now();
        for _ in 0..cfg.iters {
            if stop.load(Ordering::Relaxed) {
                return Err(Failure::Stopped);
            }
            op()?;
        }
        batches.push((now() - start) / cfg.iters as f64);
    }
    Ok(batches)
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// One workload's line of output.
#[derive(Serialize)]
struct Record<'a> {
    name: &'a str,
    clock: Clock,
    iterations: u64,
    batches: usize,
    warmup: u64,
    size: usize,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    batch_ns: Vec<f64>,
    /// Whether each operation includes making a random name.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    includes_name: bool,
}

/// `ns` to a tenth of a nanosecond, finer than any clock here resolves.
fn tenth(ns: f64) -> f64 {
    (ns * 10.0).round() / 10.0
}

fn report(cfg: &Config, name: &str, batches: &[f64], includes_name: bool) {
    let mut sorted = batches.to_vec();
    sorted.sort_by(f64::total_cmp);
    let record = Record {
        name,
        clock: cfg.clock,
        iterations: cfg.iters,
        batches: cfg.batches,
        warmup: cfg.warmup,
        size: cfg.size,
        median_ns: tenth(median(&sorted)),
        min_ns: tenth(sorted[0]),
        max_ns: tenth(sorted[sorted.len() - 1]),
        batch_ns: batches.iter().copied().map(tenth).collect(),
        includes_name,
    };
    // Names and numbers only (a NaN would be written as null): no error.
    let line = serde_json::to_string(&record).expect("a record serializes");
    println!("{line}");
}

fn run(cfg: &Config, stop: &AtomicBool) -> Result<()> {
    let needs_segment = cfg.workloads.iter().any(|w| w.starts_with("attach"));
    // Either the caller's segment, or one of ours that Drop unlinks.
    let (path, _owned) = match (&cfg.attach_name, needs_segment) {
        (_, false) => (None, None),
        (Some(name), true) => (Some(ShmPath::new(name)?), None),
        (None, true) => {
            let seg = OwnedSegment::make(cfg.size)?;
            (Some(seg.0.clone()), Some(seg))
        }
    };
    for &w in &cfg.workloads {
        let size = cfg.size;
        let create = |resize| measure(cfg, stop, || create_once(size, resize));
        let (batches, includes_name) = match w {
            "create" => (create(Resize::Fallocate)?, true),
            "create_ftruncate" => (create(Resize::FtruncateFstat)?, true),
            "create_cpython" => (create(Resize::Cpython)?, true),
            "name" => (measure(cfg, stop, name_once)?, false),
            attach => {
                let how = match attach {
                    "attach" => Attach::Plain,
                    "attach_touch" => Attach::Touch,
                    "attach_cpython" => Attach::Cpython,
                    other => unreachable!("workload {other} was validated"),
                };
                let path = path.as_ref().expect("attach workloads have a segment");
                (measure(cfg, stop, || attach_once(path, how))?, false)
            }
        };
        report(cfg, w, &batches, includes_name);
    }
    Ok(())
}

fn main() -> ExitCode {
    let stop = match stop_on_signals() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("shm-floor: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(cfg) = parse_args() else {
        return ExitCode::SUCCESS;
    };
    match run(&cfg, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Stopped) => {
            eprintln!("shm-floor: stopped; segments cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("shm-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
