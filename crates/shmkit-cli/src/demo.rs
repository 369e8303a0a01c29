//! `shmkit demo`: the demo is Python (numpy, multiprocessing); the binary
//! runs it with the interpreter that has the shmkit package.

use std::ffi::OsString;
use std::process::{Command, Stdio};

use crate::out;

const INSTALL: &str = "install the Python package (`pip install shmkit numpy`, or \
     `make develop` in a source tree), or set SHMKIT_PYTHON to a Python that has it";

pub fn run(args: &[OsString]) -> i32 {
    let python = std::env::var_os("SHMKIT_PYTHON").unwrap_or_else(|| "python3".into());
    let shown = python.to_string_lossy().into_owned();
    // Ask first, so that a missing package is told apart from a failed demo.
    let check = Command::new(&python)
        .args(["-c", "import shmkit.demo"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match check {
        Err(e) => {
            return out::fail(&format!(
                "demo: cannot run {shown}: {e}; the demo is Python: {INSTALL}"
            ))
        }
        Ok(status) if !status.success() => {
            return out::fail(&format!(
                "demo: `{shown} -c 'import shmkit.demo'` failed; the demo needs shmkit's \
                 Python package and numpy: {INSTALL}"
            ))
        }
        Ok(_) => {}
    }
    match Command::new(&python)
        .args(["-m", "shmkit", "demo"])
        .args(args)
        .status()
    {
        Ok(status) => status.code().unwrap_or(crate::EXIT_ERROR),
        Err(e) => out::fail(&format!("demo: cannot run {shown}: {e}")),
    }
}
