//! Architecture support. Only x86_64 today; the module boundary is where aarch64 would go.

pub mod x86_64;
