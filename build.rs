//! Links this package's binary, tests and benches so that glommio's bundled
//! liburing creates its io_uring rings through `src/uring.rs`
//! (`__wrap___sys_io_uring_setup`). Link arguments of a build script apply
//! to its own package only: crates that depend on shardfeed link without it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--wrap=__sys_io_uring_setup");
    }
}
