//! Ids the daemon makes up: sandbox ids (`sb-` and 16 hex digits from the OS's random source)
//! and the random suffix of template snapshot ids.

use ember_core::SandboxId;

fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: fall back on the clock and pid (still unique per host in practice;
        // uniqueness is checked by the store's insert anyway).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mix = t ^ (u64::from(std::process::id()) << 40);
        buf = mix.to_le_bytes()[..bytes.min(8)].to_vec();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh sandbox id.
pub fn sandbox_id() -> SandboxId {
    // Invariant: "sb-" + hex digits is a valid id (ASCII alphanumerics and '-', 19 bytes).
    SandboxId::new(format!("sb-{}", hex(8))).unwrap_or_else(|_| unreachable!())
}

/// Six hex digits, to keep ids of things rebuilt under the same name apart.
pub fn suffix() -> String {
    hex(3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sandbox_ids_are_distinct_and_valid() {
        let a = super::sandbox_id();
        let b = super::sandbox_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 19);
    }
}
