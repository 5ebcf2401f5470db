//! The one place that runs external commands.
//!
//! Commands that change something (builds, tests, installs) go through [`run`] or [`run_stdout`]: they are echoed as
//! `$ ...` first, and a failure names the command and its exit status. Read-only queries that only decide what
//! `setup` has to do go through [`probe`] and are not echoed; `setup` reports each of their answers as an `ok:` or
//! `missing:` line instead.

use std::{
    error::Error,
    ffi::OsStr,
    fmt, io,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The workspace root; cargo runs there so that `cargo xtask` behaves the same from any subdirectory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits one level below the workspace root")
}

/// `cargo` from `PATH` (the rustup proxy, which is what makes `+nightly` work), run in the workspace root.
pub fn cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(workspace_root());
    cargo
}

/// `cargo +nightly`, run in the workspace root: rustfmt.toml uses unstable options, and the eBPF crate builds only
/// with nightly.
pub fn cargo_nightly() -> Command {
    let mut cargo = cargo();
    cargo.arg("+nightly");
    cargo
}

/// `cargo run --release` of a binary of the `ztna-tests` crate (the benchmark, the demo) with `args`.
pub fn run_tests_binary<I, S>(binary: &str, args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "ztna-tests",
            "--bin",
            binary,
            "--",
        ])
        .args(args))
}

/// Echoes `cmd` as `$ ...`, runs it with the terminal's stdin, stdout and stderr, and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed with {status}");
    }
    Ok(())
}

/// Like [`run`], but captures stdout (stderr stays on the terminal) and returns it.
pub fn run_stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let line = display(cmd);
    println!("$ {line}");
    // stderr stays on the terminal: compiler errors must reach the person running the command.
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed with {}", output.status);
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{line}` printed something that is not UTF-8"))
}

/// Why a [`probe`] got no answer.
#[derive(Debug)]
pub enum ProbeError {
    /// The program is not on `PATH`.
    NotFound { program: String },
    /// The program could not be started, or exited unsuccessfully.
    Failed { line: String, reason: String },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { program } => write!(f, "`{program}` is not on PATH"),
            Self::Failed { line, reason } => write!(f, "`{line}` failed: {reason}"),
        }
    }
}

impl Error for ProbeError {}

/// Runs a read-only query without echoing it and returns its stdout; stdin is closed so it can never wait for input.
pub fn probe(cmd: &mut Command) -> Result<String, ProbeError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => ProbeError::NotFound {
                program: cmd.get_program().to_string_lossy().into_owned(),
            },
            _ => ProbeError::Failed {
                line: display(cmd),
                reason: err.to_string(),
            },
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first_line = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(ProbeError::Failed {
            line: display(cmd),
            reason: format!("{}: {first_line}", output.status),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Renders `cmd` as a line a shell would run the same way: `LLVM_PREFIX=/opt/ztna/llvm-22 cargo install ...`.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

/// Single-quotes a word when the shell would otherwise split or expand it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_env_and_quotes_only_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/opt/ztna/llvm-22").args([
            "install",
            "--version",
            "^0.13",
            "-f=${Status}",
            "it's",
        ]);
        assert_eq!(
            display(&cmd),
            r#"LLVM_PREFIX=/opt/ztna/llvm-22 cargo install --version ^0.13 '-f=${Status}' 'it'\''s'"#
        );
    }

    #[test]
    fn probe_reports_a_missing_program_as_not_found() {
        let err = probe(&mut Command::new("ztna-no-such-program")).unwrap_err();
        assert!(matches!(err, ProbeError::NotFound { .. }), "{err}");
    }

    #[test]
    fn probe_reports_exit_status_and_stderr() {
        let err = probe(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("exit status: 3") && message.contains("broken"),
            "{message}"
        );
    }

    #[test]
    fn run_names_the_command_and_status() {
        let err = run(Command::new("sh").args(["-c", "exit 7"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c 'exit 7'` failed with exit status: 7"
        );
    }
}
