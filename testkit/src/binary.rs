//! Finding server binaries and running helper commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Result, TestkitError};

/// Looks for `name` in `extra_dirs` first, then on `PATH`.
pub(crate) fn find(
    name: &'static str,
    package: &'static str,
    extra_dirs: &[PathBuf],
) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates: Vec<PathBuf> = extra_dirs.iter().chain(path_dirs.iter()).cloned().collect();
    for dir in &candidates {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(TestkitError::MissingBinary {
        binary: name,
        package,
        searched: candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a command to completion and turns a non-zero exit into an error.
pub(crate) fn run(command: &mut Command) -> Result<Output> {
    let described = format!("{command:?}");
    let output = command
        .output()
        .map_err(TestkitError::io(format!("running {described}")))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(TestkitError::CommandFailed {
            command: described,
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// The last `max` bytes of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}

/// Whether a process with this id still exists (and is not a zombie).
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_package_to_install() {
        let error = find(
            "keel-no-such-server",
            "keel-server-package",
            &[PathBuf::from("/nonexistent")],
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("`keel-no-such-server` was not found"),
            "{message}"
        );
        assert!(
            message.contains("apt-get install -y keel-server-package"),
            "{message}"
        );
        assert!(
            message.contains("/nonexistent"),
            "says where it looked: {message}"
        );
    }

    #[test]
    fn finds_a_binary_on_path() {
        let sh = find("sh", "dash", &[]).unwrap();
        assert!(sh.ends_with("sh"));
    }

    #[test]
    fn exited_processes_are_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert!(process_alive(std::process::id()));
    }
}
