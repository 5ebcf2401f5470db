//! `ztna-agent policy check FILE`: a good policy exits 0 with a summary, a bad one exits non-zero and
//! names every problem by file and line.

use std::process::Command;

fn policy_check(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ztna-agent"))
        .args(["policy", "check"])
        .arg(path)
        .output()
        .expect("run ztna-agent");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn a_valid_policy_passes_with_a_summary() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy.toml");
    let (ok, text) = policy_check(&fixture);
    assert!(ok, "{text}");
    assert!(text.contains("ok: 3 apps"), "{text}");
}

#[test]
fn an_invalid_policy_fails_naming_each_line() {
    let dir = std::env::temp_dir().join(format!("ztna-policy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        "[[apps]]\nname = \"db\"\nprefixes = [\"10.0.0.0/24\"]\nservices = [\"tcp/70000\"]\n\n\
         [[rules]]\nname = \"r\"\napps = [\"nope\"]\n",
    )
    .unwrap();
    let (ok, text) = policy_check(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("policy.toml:4:"), "{text}");
    assert!(text.contains("70000 exceeds 65535"), "{text}");
    assert!(text.contains("nope"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
}
