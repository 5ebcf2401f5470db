use which::which;

/// Building this crate needs `bpf-linker`; rebuild when it changes (`cargo xtask setup` installs it).
fn main() {
    match which("bpf-linker") {
        Ok(bpf_linker) => println!("cargo:rerun-if-changed={}", bpf_linker.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
