//! `keelson-cni`: the CNI 1.1 plugin (being built).

#![forbid(unsafe_code)]

fn main() {
    eprintln!("keelson-cni: not built yet");
    std::process::exit(1);
}
