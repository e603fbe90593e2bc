//! Build script of libhreg: gives the shared library its SONAME
//! (`libhreg.so.0`), which cargo does not set for a cdylib.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libhreg.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
