//! Links the `ember-vmm` binary of debug builds as a non-PIE executable.
//!
//! A position-independent executable has its relocated read-only data (`.data.rel.ro`:
//! vtables, static tables of pointers) written by the dynamic loader at start-up, so those
//! pages are private to every process: ~460 KiB per process in a debug build of today's
//! workspace, ~100 KiB in a release build. The integration tests measure the private memory of
//! 20 restored VMs against a 1 MiB budget; in a debug build that cost would be half the budget
//! and say nothing about the VM. Release builds stay PIE (address-space randomisation of the
//! VMM's own code); whether to trade that for ~100 KiB per pooled VM is a deployment choice
//! (see the README's memory notes).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("PROFILE").as_deref() == Ok("debug") {
        println!("cargo:rustc-link-arg-bin=ember-vmm=-no-pie");
    }
}
