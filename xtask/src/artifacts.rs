//! The executables cargo built, read from its `--message-format=json` output.
//!
//! Only a few string fields of the `compiler-artifact` messages are needed, so they are picked out here
//! rather than pulling a JSON parser into xtask.

use std::path::PathBuf;

use anyhow::Context as _;

/// Which artifacts to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every executable (binaries and tests).
    Any,
    /// Integration test targets.
    Test,
    /// Binary targets.
    Bin,
}

/// The `executable` paths in cargo's `compiler-artifact` messages (one JSON object per line).
pub fn executables(messages: &str, kind: Kind) -> anyhow::Result<Vec<PathBuf>> {
    const KEY: &str = r#""executable":""#;
    let marker = match kind {
        Kind::Any => None,
        Kind::Test => Some(r#""kind":["test"]"#),
        Kind::Bin => Some(r#""kind":["bin"]"#),
    };
    let mut executables = Vec::new();
    for line in messages.lines() {
        if !line.starts_with(r#"{"reason":"compiler-artifact""#)
            || marker.is_some_and(|m| !line.contains(m))
        {
            continue;
        }
        let Some(start) = line.find(KEY) else {
            continue; // `"executable":null` for libraries and build scripts
        };
        let executable = json_string(&line[start + KEY.len()..])
            .with_context(|| format!("failed to read the executable path in {line}"))?;
        executables.push(PathBuf::from(executable));
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
            executables(messages, Kind::Any).unwrap(),
            [
                PathBuf::from("/w/target/release/ztna-agent"),
                PathBuf::from("/w/odd \"dir\"\\x/t\u{e9}st")
            ]
        );
    }

    #[test]
    fn selects_tests_or_binaries() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"ztna_tests"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"load"},"executable":"/w/target/release/deps/load-97ff474592940f84"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"ztna-agent"},"executable":"/w/target/release/ztna-agent"}"#,
        );
        assert_eq!(
            executables(messages, Kind::Test).unwrap(),
            [PathBuf::from(
                "/w/target/release/deps/load-97ff474592940f84"
            )]
        );
        assert_eq!(
            executables(messages, Kind::Bin).unwrap(),
            [PathBuf::from("/w/target/release/ztna-agent")]
        );
    }

    #[test]
    fn an_unterminated_path_is_an_error() {
        assert!(
            executables(
                r#"{"reason":"compiler-artifact","executable":"/w/targ"#,
                Kind::Any
            )
            .is_err()
        );
    }
}
