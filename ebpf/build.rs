//! Compiles the eBPF programs beside this file (*.c) with clang (default `clang-19`,
//! override with KEELSON_CLANG) into OUT_DIR; src/loader.rs embeds them.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["sock", "tc"];
const HEADERS: &[&str] = &["lb.h", "maps.h"];

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.clone();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = std::env::var("KEELSON_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=KEELSON_CLANG");
    // The UAPI headers include <asm/types.h>, which lives in the host's
    // multiarch directory.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for h in HEADERS {
        println!("cargo:rerun-if-changed={}", src.join(h).display());
    }
    for p in PROGRAMS {
        let c = src.join(format!("{p}.c"));
        println!("cargo:rerun-if-changed={}", c.display());
        let obj = out.join(format!("{p}.o"));
        let result = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(&c)
            .arg("-o")
            .arg(&obj)
            .status();
        match result {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed ({s}) compiling {}", c.display()),
            Err(e) => panic!(
                "cannot run {clang} to compile {}: {e} (install clang-19 and libbpf-dev: cargo xtask setup)",
                c.display()
            ),
        }
    }
}
