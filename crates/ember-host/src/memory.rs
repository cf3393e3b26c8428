//! Host memory of a VMM process, from `/proc/<pid>/smaps`: what it costs beyond the guest pages
//! it holds privately (the pages the guest wrote after a copy-on-write restore).

use serde::Serialize;

/// One VMM process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VmmMemory {
    /// Private (clean + dirty) pages of the whole process.
    pub private_kib: u64,
    /// Proportional set size of the whole process.
    pub pss_kib: u64,
    /// Private pages inside the guest memory mapping(s): what the guest touched.
    pub guest_private_kib: u64,
    /// Private pages outside guest memory: the VMM's own cost.
    pub vmm_private_kib: u64,
}

/// Reads `/proc/<pid>/smaps`; mappings of exactly `guest_mem_kib` KiB (or larger, for split
/// regions above 3 GiB) that are file-backed or anonymous RAM count as guest memory.
pub fn vmm_memory(pid: u32, guest_mem_kib: u64) -> std::io::Result<VmmMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_smaps(&text, guest_mem_kib))
}

fn parse_smaps(text: &str, guest_mem_kib: u64) -> VmmMemory {
    let mut m = VmmMemory::default();
    let mut in_guest = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(key) = parts.next() else { continue };
        if !key.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            in_guest = key
                .split_once('-')
                .and_then(|(a, b)| {
                    let a = u64::from_str_radix(a, 16).ok()?;
                    let b = u64::from_str_radix(b, 16).ok()?;
                    Some((b - a) / 1024)
                })
                .is_some_and(|kib| guest_mem_kib > 0 && kib == guest_mem_kib);
            continue;
        }
        let value: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "Private_Clean:" | "Private_Dirty:" => {
                m.private_kib += value;
                if in_guest {
                    m.guest_private_kib += value;
                }
            }
            "Pss:" => m.pss_kib += value,
            _ => {}
        }
    }
    m.vmm_private_kib = m.private_kib - m.guest_private_kib;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_guest_from_vmm() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 1 /usr/bin/ember-vmm
Size:                 64 kB
Pss:                  10 kB
Private_Clean:         4 kB
Private_Dirty:         0 kB
7f0000000000-7f0008000000 rw-p 00000000 08:01 2 /snap/mem
Size:             131072 kB
Pss:                  40 kB
Private_Clean:         0 kB
Private_Dirty:        32 kB
7ff0-7ff8 rw-p 00000000 00:00 0 [heap]
Size:                 32 kB
Pss:                 100 kB
Private_Clean:         0 kB
Private_Dirty:       100 kB
";
        let m = parse_smaps(smaps, 128 * 1024);
        assert_eq!(m.private_kib, 136);
        assert_eq!(m.guest_private_kib, 32);
        assert_eq!(m.vmm_private_kib, 104);
        assert_eq!(m.pss_kib, 150);
    }
}
