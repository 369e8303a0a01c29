//! Every segment on this machine: the listing `shmkit ls` and `gc` start
//! from. The core judges one named segment ([`shmkit::usage::segment`]);
//! only the command needs them all, so the walk of `/dev/shm` lives here.

use shmkit::usage::{self, SegmentInfo};

/// Where POSIX shared memory segments live on Linux.
const SHM_DIR: &str = "/dev/shm";

/// Every segment in `/dev/shm`, sorted by name.
///
/// Only regular files count (not directories, FIFOs or symbolic links), and
/// only names that are UTF-8 and valid segment names, as every name a
/// segment API can open is. A file removed between the listing and its
/// `stat` is left out, not an error.
///
/// ```
/// let shm = shmkit::SharedMemory::create(64)?;
/// let all = shmkit_cli::inspect::segments()?;
/// let seg = all.iter().find(|s| s.name == shm.name()).unwrap();
/// assert_eq!(seg.size, 64);
/// shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn segments() -> shmkit::Result<Vec<SegmentInfo>> {
    let entries = std::fs::read_dir(SHM_DIR).map_err(|source| shmkit::Error::Io {
        op: "list",
        name: SHM_DIR.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| shmkit::Error::Io {
            op: "list",
            name: SHM_DIR.to_owned(),
            source,
        })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // `segment` rejects an invalid name and what is not a regular
        // file; those, and a file gone since the listing, are no segment.
        if let Ok(info) = usage::segment(&name) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_regular_files_only() {
        let shm = shmkit::SharedMemory::create(64).unwrap();
        let dir = format!("shmkit_t_dir_{}", shmkit::name::generate());
        std::fs::create_dir(format!("{SHM_DIR}/{dir}")).unwrap();
        let all = segments();
        std::fs::remove_dir(format!("{SHM_DIR}/{dir}")).unwrap();
        let all = all.unwrap();
        assert!(all.iter().any(|s| s.name == shm.name()));
        assert!(
            !all.iter().any(|s| s.name == dir),
            "a directory is no segment"
        );
        assert!(all.windows(2).all(|w| w[0].name < w[1].name));
        shm.unlink().unwrap();
    }
}
