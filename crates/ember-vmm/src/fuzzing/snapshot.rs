//! `snapshot_state`: a snapshot state file as `snapshot/load` reads it — the container
//! (header, sections, CRC), every section's decoder ([`MicrovmState::from_bytes`]), the
//! configuration JSON, the restore checks ([`validate::check_restore`]), and the saved state
//! of each virtio device through the decoder its restore uses (the transport's registers and
//! queues; the rng's and block device's own bytes).
//!
//! The first input byte says which header fields the harness fixes before decoding (so the
//! fuzzer is not stopped at the CRC): bit 0 set keeps the input's payload length, bit 1 set
//! keeps its CRC; otherwise they are rewritten to match the bytes.
//!
//! Invariants: a decoded state re-encodes to a file that decodes again and re-encodes to the
//! same bytes; device states that decode re-encode to bytes that decode the same.

use crate::config::VmConfig;
use crate::devices::virtio::block::{Block, BlockParams};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{TYPE_BLOCK, TYPE_RNG};
use crate::rate_limiter::Clock;
use crate::snapshot::codec::{Reader, Writer};
use crate::snapshot::format::{HEADER_LEN, MIN_FILE_LEN, check_header};
use crate::snapshot::{MicrovmState, validate};

/// `snapshot_state`.
pub fn snapshot_state(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if file.len() >= MIN_FILE_LEN {
        let body_end = file.len() - 4;
        if flags & 1 == 0 {
            let payload = (body_end - HEADER_LEN) as u64;
            file[16..24].copy_from_slice(&payload.to_le_bytes());
        }
        if flags & 2 == 0 {
            let crc = crc32fast::hash(&file[..body_end]);
            file[body_end..].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let _ = check_header(&file, file.len() as u64);
    let state = match MicrovmState::from_bytes(&file) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let bytes = state.to_bytes();
    let again = match MicrovmState::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => panic!("a re-encoded state does not decode: {e}"),
    };
    assert!(
        again.to_bytes() == bytes,
        "the state encoding is not stable"
    );
    assert_eq!(
        again.virtio, state.virtio,
        "virtio sections changed in a round trip"
    );
    assert_eq!(again.memory_regions, state.memory_regions);
    assert_eq!(again.vmgenid, state.vmgenid);
    for d in &state.virtio {
        device_state(d.device_type, &d.id, &d.device);
    }
    let config = match serde_json::from_slice::<VmConfig>(&state.config_json) {
        Ok(c) => c.with_defaults(),
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Err(e) = validate::check_restore(&state, &config) {
        let _ = e.to_string();
    }
}

/// Decodes a device's own saved bytes as its restore would; what decodes must re-encode to
/// bytes that decode and encode the same.
fn device_state(device_type: u32, id: &str, bytes: &[u8]) {
    match device_type {
        TYPE_RNG => {
            let mut r = Reader::new(bytes);
            let Ok(rng) = Rng::restore(&mut r, Clock::Monotonic) else {
                return;
            };
            let mut w = Writer::default();
            rng.encode_state(&mut w);
            let first = w.into_vec();
            let rng = Rng::restore(&mut Reader::new(&first), Clock::Monotonic)
                .expect("a re-encoded rng state decodes");
            let mut w = Writer::default();
            rng.encode_state(&mut w);
            assert_eq!(w.into_vec(), first, "the rng state encoding is not stable");
        }
        TYPE_BLOCK => {
            let params = |read_only: bool| BlockParams {
                id: id.to_string(),
                path: super::virtio::disk_path().clone(),
                read_only,
                cache_type: ember_fc_api::CacheType::Unsafe,
                rate_limiter: None,
                clock: Clock::Monotonic,
            };
            for read_only in [false, true] {
                let mut r = Reader::new(bytes);
                let Ok(block) = Block::restore(params(read_only), &mut r) else {
                    continue;
                };
                let mut w = Writer::default();
                block.encode_state(&mut w);
                let first = w.into_vec();
                let block = Block::restore(params(read_only), &mut Reader::new(&first))
                    .expect("a re-encoded block state decodes");
                let mut w = Writer::default();
                block.encode_state(&mut w);
                assert_eq!(
                    w.into_vec(),
                    first,
                    "the block state encoding is not stable"
                );
            }
        }
        _ => {}
    }
}

/// Seeds: the sample state of the snapshot tests as is (two vCPUs, a vsock device, a VM
/// generation id), and with a configuration that passes the restore checks; each once with
/// the header fixed by the harness and once as written.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let base = crate::snapshot::state::tests::sample_state();
    let mut valid = base.clone();
    valid.config_json = br#"{"machine-config":{"vcpu_count":2,"mem_size_mib":128},"vsock":{"guest_cid":3,"uds_path":"/tmp/ember-fuzz-seed-v.sock"}}"#.to_vec();
    for state in [base, valid] {
        for flags in [0u8, 3] {
            let mut v = vec![flags];
            v.extend_from_slice(&state.to_bytes());
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed with a matching configuration passes the restore checks, so the fuzzer starts
    /// from a state that reaches every check.
    #[test]
    fn the_valid_seed_passes_the_restore_checks() {
        let seeds = seeds();
        let state = MicrovmState::from_bytes(&seeds[2][1..]).unwrap();
        let config = serde_json::from_slice::<VmConfig>(&state.config_json)
            .unwrap()
            .with_defaults();
        validate::check_restore(&state, &config).unwrap();
        for s in &seeds {
            snapshot_state(s);
        }
    }
}
