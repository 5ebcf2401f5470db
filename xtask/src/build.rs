//! `cargo xtask build`: release build of the default workspace members, then the paths of the binaries.

use anyhow::Context as _;

use crate::{cmd, setup};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(Args {}: Args) -> anyhow::Result<()> {
    setup::prepare(setup::Needs::Run)?;
    // JSON messages on stdout name every artifact; diagnostics are still rendered for humans on stderr.
    let messages = cmd::run_stdout(cmd::cargo().args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
    ]))?;
    let executables = executables(&messages).context("failed to read cargo's build messages")?;
    for executable in executables {
        println!("built: {executable}");
    }
    Ok(())
}

/// The `executable` paths of cargo's `compiler-artifact` messages (one JSON object per line).
///
/// Only this one string field is needed, so it is picked out here rather than pulling a JSON parser into xtask.
fn executables(messages: &str) -> anyhow::Result<Vec<String>> {
    const KEY: &str = r#""executable":""#;
    let mut executables = Vec::new();
    for line in messages.lines() {
        if !line.starts_with(r#"{"reason":"compiler-artifact""#) {
            continue;
        }
        let Some(start) = line.find(KEY) else {
            continue; // `"executable":null` for libraries and build scripts
        };
        let executable = json_string(&line[start + KEY.len()..])
            .with_context(|| format!("failed to read the executable path in {line}"))?;
        executables.push(executable);
    }
    Ok(executables)
}

/// Decodes a JSON string body up to its closing quote (the opening quote already consumed).
fn json_string(body: &str) -> Option<String> {
    let mut decoded = String::new();
    let mut chars = body.chars();
    loop {
        match chars.next()? {
            '"' => return Some(decoded),
            '\\' => decoded.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'b' => '\u{8}',
                'f' => '\u{c}',
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                escaped => escaped, // `\"`, `\\`, `\/`
            }),
            plain => decoded.push(plain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_and_skips_libraries() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"ztna_common"},"executable":null,"fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"ztna-agent"},"executable":"/w/target/release/ztna-agent","fresh":false}"#,
            "\n",
            r#"{"reason":"compiler-artifact","executable":"/w/odd \"dir\"\\x/t\u00e9st","fresh":false}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executables(messages).unwrap(),
            [
                "/w/target/release/ztna-agent",
                "/w/odd \"dir\"\\x/t\u{e9}st"
            ]
        );
    }

    #[test]
    fn an_unterminated_path_is_an_error() {
        assert!(executables(r#"{"reason":"compiler-artifact","executable":"/w/targ"#).is_err());
    }
}
