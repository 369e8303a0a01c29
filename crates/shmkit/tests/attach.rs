//! Attaching: to what is not a segment, and with pages reserved.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;

use shmkit::{Error, Options};

fn unique(tag: &str) -> String {
    format!(
        "shmkit_test_attach_{tag}_{}_{}",
        std::process::id(),
        &shmkit::name::generate()[4..]
    )
}

fn path(name: &str) -> String {
    format!("/dev/shm/{name}")
}

/// Bytes of the file that have pages behind them.
fn allocated(name: &str) -> u64 {
    std::fs::metadata(path(name)).unwrap().blocks() * 512
}

#[test]
fn a_fifo_or_a_directory_is_einval_and_left_alone() {
    let fifo = unique("fifo");
    let dir = unique("dir");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path(&fifo).as_str(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::create_dir(path(&dir)).unwrap();
    let results: Vec<_> = [&fifo, &dir]
        .iter()
        .flat_map(|name| {
            [
                Options::new().open(name),
                Options::new().reserve(true).open(name),
                Options::new().open_or_create(name, Some(8)),
            ]
        })
        .collect();
    let fifo_left = std::fs::symlink_metadata(path(&fifo)).is_ok();
    let dir_left = std::path::Path::new(&path(&dir)).is_dir();
    let _ = std::fs::remove_file(path(&fifo));
    let _ = std::fs::remove_dir(path(&dir));
    for result in results {
        match result {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(22), "{source}");
                assert_eq!(source.kind(), ErrorKind::InvalidInput);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(fifo_left && dir_left);
}

#[test]
fn reserve_on_attach_fills_a_sparse_segment_s_holes_and_nothing_else() {
    const SIZE: usize = 1 << 20;
    let made = Options::new()
        .reserve(false)
        .create_named(&unique("sparse"), SIZE)
        .unwrap();
    let name = made.name().to_owned();
    made.write_at(SIZE - 5, b"kept!").unwrap();
    let before = allocated(&name);
    // The default attach reserves nothing.
    let plain = Options::new().open(&name).unwrap();
    let after_plain = allocated(&name);
    let reserved = Options::new().reserve(true).open(&name).unwrap();
    let after_reserve = allocated(&name);
    let kept = reserved.read_vec(SIZE - 5, 5).unwrap();
    let size = std::fs::metadata(path(&name)).unwrap().len();
    made.unlink().unwrap();
    drop((plain, reserved));
    assert!(before < SIZE as u64 / 2, "{before}");
    assert_eq!(after_plain, before);
    assert!(after_reserve >= SIZE as u64, "{after_reserve}");
    assert_eq!(kept, b"kept!");
    assert_eq!(size, SIZE as u64);
}
