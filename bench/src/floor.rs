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

use std::ffi::{c_int, CStr};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self, AtFlags, FallocateFlags, Mode, OFlags, CWD};
use rustix::io::{self, Errno};
use rustix::mm::{self, MapFlags, ProtFlags};
use rustix::rand::{self, GetRandomFlags};
use rustix::time::{clock_gettime, ClockId};

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

/// Set by the signal handler; every loop checks it once per iteration.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: c_int) {
    STOP.store(true, Ordering::Relaxed);
}

extern "C" {
    // From the C library std links anyway; rustix has no stable sigaction.
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
}

fn install_signal_handlers() {
    const SIGHUP: c_int = 1;
    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    for sig in [SIGHUP, SIGINT, SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { signal(sig, on_signal) };
    }
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

struct Config {
    clock: ClockId,
    iters: u64,
    batches: usize,
    warmup: u64,
    size: usize,
    workloads: Vec<&'static str>,
    attach_name: Option<String>,
}

fn usage() -> String {
    let mut s = String::from(
        "usage: shm-floor [--iters N] [--batches K] [--warmup W] [--size BYTES]\n\
         \x20                [--workload NAME[,NAME...]] [--attach-name NAME]\n\
         \x20                [--clock wall|cpu] [--list]\n\
         \n\
         Runs the bare system calls of each workload N times per batch, K batches,\n\
         after W untimed iterations; prints one JSON line per workload with the\n\
         median over batches of the mean ns/op. --attach-name attaches to an\n\
         existing segment instead of making one. --clock cpu times with this\n\
         process's CPU time instead of the wall clock. Workloads:\n",
    );
    for (name, what) in WORKLOADS {
        s.push_str(&format!("  {name:<17} {what}\n"));
    }
    s
}

fn parse_args() -> Result<Option<Config>> {
    let mut cfg = Config {
        clock: ClockId::Monotonic,
        iters: 2000,
        batches: 15,
        warmup: u64::MAX,
        size: 4096,
        workloads: vec![
            "create",
            "create_ftruncate",
            "name",
            "attach",
            "attach_touch",
        ],
        attach_name: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| Failure::Usage(format!("{key} needs a value\n\n{}", usage())))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| Failure::Usage(format!("{key}: not a number: {v:?}")))
        };
        match key.as_str() {
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(None);
            }
            "--list" => {
                for (name, _) in WORKLOADS {
                    println!("{name}");
                }
                return Ok(None);
            }
            "--iters" | "-n" => cfg.iters = number(value()?)?.max(1),
            "--batches" | "-k" => cfg.batches = number(value()?)?.max(1) as usize,
            "--warmup" => cfg.warmup = number(value()?)?,
            "--size" => cfg.size = number(value()?)?.max(1) as usize,
            "--attach-name" => cfg.attach_name = Some(value()?),
            "--clock" => {
                cfg.clock = match value()?.as_str() {
                    "wall" => ClockId::Monotonic,
                    "cpu" => ClockId::ProcessCPUTime,
                    other => {
                        return Err(Failure::Usage(format!(
                            "--clock: wall or cpu, not {other:?}"
                        )))
                    }
                }
            }
            "--workload" | "-w" => {
                let v = value()?;
                cfg.workloads = if v == "all" {
                    WORKLOADS.iter().map(|(n, _)| *n).collect()
                } else {
                    v.split(',')
                        .map(|w| {
                            WORKLOADS
                                .iter()
                                .map(|(n, _)| *n)
                                .find(|n| *n == w.trim())
                                .ok_or_else(|| {
                                    Failure::Usage(format!("unknown workload {w:?}\n\n{}", usage()))
                                })
                        })
                        .collect::<Result<_>>()?
                };
            }
            _ => {
                return Err(Failure::Usage(format!(
                    "unknown argument {arg:?}\n\n{}",
                    usage()
                )))
            }
        }
    }
    if cfg.warmup == u64::MAX {
        cfg.warmup = (cfg.iters / 10).clamp(50, 1000);
    }
    Ok(Some(cfg))
}

/// Runs `op` W times untimed, then K timed batches of N; returns the mean
/// ns/op of each batch.
fn measure(cfg: &Config, mut op: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..cfg.warmup {
        if STOP.load(Ordering::Relaxed) {
            return Err(Failure::Stopped);
        }
        op()?;
    }
    let now = || {
        let t = clock_gettime(cfg.clock);
        t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
    };
    let mut batches = Vec::with_capacity(cfg.batches);
    for _ in 0..cfg.batches {
        let start = now();
        for _ in 0..cfg.iters {
            if STOP.load(Ordering::Relaxed) {
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

fn report(cfg: &Config, name: &str, batches: &[f64], extra: &str) {
    let mut sorted = batches.to_vec();
    sorted.sort_by(f64::total_cmp);
    let list: Vec<String> = batches.iter().map(|b| format!("{b:.1}")).collect();
    println!(
        "{{\"name\":\"{name}\",\"clock\":\"{}\",\"iterations\":{},\"batches\":{},\
         \"warmup\":{},\"size\":{},\"median_ns\":{:.1},\"min_ns\":{:.1},\"max_ns\":{:.1},\
         \"batch_ns\":[{}]{extra}}}",
        if cfg.clock == ClockId::Monotonic {
            "wall"
        } else {
            "cpu"
        },
        cfg.iters,
        cfg.batches,
        cfg.warmup,
        cfg.size,
        median(&sorted),
        sorted[0],
        sorted[sorted.len() - 1],
        list.join(","),
    );
}

fn run(cfg: &Config) -> Result<()> {
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
        let (batches, extra) = match w {
            "create" => (
                measure(cfg, || create_once(size, Resize::Fallocate))?,
                ",\"includes_name\":true",
            ),
            "create_ftruncate" => (
                measure(cfg, || create_once(size, Resize::FtruncateFstat))?,
                ",\"includes_name\":true",
            ),
            "create_cpython" => (
                measure(cfg, || create_once(size, Resize::Cpython))?,
                ",\"includes_name\":true",
            ),
            "name" => (measure(cfg, name_once)?, ""),
            attach => {
                let how = match attach {
                    "attach" => Attach::Plain,
                    "attach_touch" => Attach::Touch,
                    "attach_cpython" => Attach::Cpython,
                    other => unreachable!("workload {other} was validated"),
                };
                let path = path.as_ref().expect("attach workloads have a segment");
                (measure(cfg, || attach_once(path, how))?, "")
            }
        };
        report(cfg, w, &batches, extra);
    }
    Ok(())
}

fn main() -> ExitCode {
    install_signal_handlers();
    let cfg = match parse_args() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-floor: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg) {
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
