//! virtio-blk at the queue level: the test plays the guest driver, placing headers, data
//! buffers and status bytes in guest memory and descriptors in the ring.
//!
//! Over 600 lines on purpose: each scenario lays its descriptors out explicitly, so a reader
//! sees exactly which chain the device got.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{Queue, QueueT};

use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use super::*;
use crate::devices::virtio::test_utils::{OUTSIDE, TestQueue, test_memory, wait_for_timer};
use ember_fc_api::TokenBucket as TokenBucketConfig;

const SECTORS: u64 = 64;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x30_0000;
/// A status byte the device never writes: shows "untouched".
const SENTINEL: u8 = 0xEE;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A disk whose sector `i` is filled with byte `i`.
fn disk() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..SECTORS {
        f.write_all(&[i as u8; SECTOR_SIZE as usize]).unwrap();
    }
    f
}

fn params(f: &tempfile::NamedTempFile) -> BlockParams {
    BlockParams {
        id: "rootfs".into(),
        path: f.path().to_path_buf(),
        read_only: false,
        cache_type: CacheType::Unsafe,
        rate_limiter: None,
        clock: Clock::Monotonic,
    }
}

fn sector_of(f: &tempfile::NamedTempFile, sector: u64) -> Vec<u8> {
    let mut file = f.reopen().unwrap();
    file.seek(SeekFrom::Start(sector * SECTOR_SIZE)).unwrap();
    let mut v = vec![0u8; SECTOR_SIZE as usize];
    file.read_exact(&mut v).unwrap();
    v
}

/// Writes a request header at `at`.
fn header(tq: &TestQueue<'_>, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    tq.write(at, &h);
}

/// Queues a well-formed request: header, one data buffer (if `len > 0`), status.
fn request(tq: &mut TestQueue<'_>, slot: u64, kind: u32, sector: u64, len: u32) -> u16 {
    let (h, d, s) = (HDR + slot * 0x100, DATA + slot * 0x1_0000, STATUS + slot);
    header(tq, h, kind, sector);
    tq.write(s, &[SENTINEL]);
    let data_writable = kind != VIRTIO_BLK_T_OUT;
    if len == 0 {
        tq.add_chain(&[(h, 16, false), (s, 1, true)])
    } else {
        tq.add_chain(&[(h, 16, false), (d, len, data_writable), (s, 1, true)])
    }
}

fn status(tq: &TestQueue<'_>, slot: u64) -> u8 {
    tq.read(STATUS + slot, 1)[0]
}

#[test]
fn read_write_flush_get_id() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q: Queue = tq.queue();
    let mut blk = Block::new(params(&f)).unwrap();
    assert_eq!(blk.nsectors(), SECTORS);

    request(&mut tq, 0, VIRTIO_BLK_T_IN, 3, 1024);
    tq.write(DATA + 0x1_0000, &[0xAB; 512]);
    request(&mut tq, 1, VIRTIO_BLK_T_OUT, 10, 512);
    request(&mut tq, 2, VIRTIO_BLK_T_FLUSH, 0, 0);
    request(&mut tq, 3, VIRTIO_BLK_T_GET_ID, 0, 20);
    let out = blk.process_queue(&mem, &mut q, &hl);
    assert_eq!(
        out,
        QueueOutcome {
            completed: 4,
            throttled: false,
            more: false,
        }
    );
    assert_eq!(tq.used_idx(), 4);

    // IN: two sectors into guest memory, used length = data + status.
    assert_eq!(tq.used(0), (0, 1025));
    assert_eq!(status(&tq, 0), VIRTIO_BLK_S_OK);
    assert_eq!(tq.read(DATA, 512), vec![3u8; 512]);
    assert_eq!(tq.read(DATA + 512, 512), vec![4u8; 512]);
    // OUT: on the disk, used length = status only.
    assert_eq!(tq.used(1), (3, 1));
    assert_eq!(status(&tq, 1), VIRTIO_BLK_S_OK);
    assert_eq!(sector_of(&f, 10), vec![0xAB; 512]);
    assert_eq!(sector_of(&f, 11), vec![11u8; 512], "neighbours untouched");
    // FLUSH with cache_type Unsafe: accepted, nothing to sync.
    assert_eq!(tq.used(2), (6, 1));
    assert_eq!(status(&tq, 2), VIRTIO_BLK_S_OK);
    // GET_ID: the drive id, zero-padded to 20 bytes.
    assert_eq!(tq.used(3), (8, 21));
    assert_eq!(status(&tq, 3), VIRTIO_BLK_S_OK);
    assert_eq!(
        &tq.read(DATA + 0x3_0000, 20),
        b"rootfs\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );

    let st = blk.stats();
    assert_eq!((st.read_bytes, st.write_bytes, st.failed), (1024, 512, 0));
}

#[test]
fn any_layout_data_and_status_share_a_descriptor() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    let mut blk = Block::new(params(&f)).unwrap();
    header(&tq, HDR, VIRTIO_BLK_T_IN, 5);
    // Header split over two descriptors; data + status in one 513-byte buffer.
    tq.add_chain(&[(HDR, 10, false), (HDR + 10, 6, false), (DATA, 513, true)]);
    blk.process_queue(&mem, &mut q, &hl);
    assert_eq!(tq.used(0), (0, 513));
    assert_eq!(tq.read(DATA, 512), vec![5u8; 512]);
    assert_eq!(tq.read(DATA + 512, 1), vec![VIRTIO_BLK_S_OK]);
}

#[test]
fn writeback_offers_and_performs_flush() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    let unsafe_blk = Block::new(params(&f)).unwrap();
    assert_eq!(unsafe_blk.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let mut blk = Block::new(BlockParams {
        cache_type: CacheType::Writeback,
        ..params(&f)
    })
    .unwrap();
    assert_ne!(blk.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(blk.avail_features() & feature(VIRTIO_F_VERSION_1), 0);
    request(&mut tq, 0, VIRTIO_BLK_T_FLUSH, 0, 0);
    blk.process_queue(&mem, &mut q, &hl);
    assert_eq!(status(&tq, 0), VIRTIO_BLK_S_OK);
    assert_eq!(blk.stats().flushes, 1);
}

#[test]
fn read_only_drive_refuses_writes_and_serves_reads() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    let mut blk = Block::new(BlockParams {
        read_only: true,
        ..params(&f)
    })
    .unwrap();
    assert_ne!(blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    tq.write(DATA, &[0x55; 512]);
    request(&mut tq, 0, VIRTIO_BLK_T_OUT, 2, 512);
    request(&mut tq, 1, VIRTIO_BLK_T_IN, 2, 512);
    request(&mut tq, 2, VIRTIO_BLK_T_FLUSH, 0, 0);
    assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 3);
    assert_eq!(status(&tq, 0), VIRTIO_BLK_S_IOERR);
    assert_eq!(tq.used(0).1, 1);
    assert_eq!(sector_of(&f, 2), vec![2u8; 512], "disk unchanged");
    assert_eq!(status(&tq, 1), VIRTIO_BLK_S_OK);
    assert_eq!(tq.read(DATA + 0x1_0000, 512), vec![2u8; 512]);
    assert_eq!(status(&tq, 2), VIRTIO_BLK_S_OK);
    assert_eq!(blk.stats().failed, 1);
}

#[test]
fn sector_bounds_partial_sectors_and_unknown_types() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 32);
    let mut q = tq.queue();
    let mut blk = Block::new(params(&f)).unwrap();
    let cases: &[(u32, u64, u32, u8)] = &[
        (VIRTIO_BLK_T_IN, SECTORS - 2, 1024, VIRTIO_BLK_S_OK), // ends exactly at the end
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024, VIRTIO_BLK_S_IOERR), // one sector past the end
        (VIRTIO_BLK_T_OUT, SECTORS, 512, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, u64::MAX, 512, VIRTIO_BLK_S_IOERR), // sector + count overflows
        (VIRTIO_BLK_T_IN, 0, 100, VIRTIO_BLK_S_IOERR),        // not whole sectors
        (11, 0, 512, VIRTIO_BLK_S_UNSUPP),                    // DISCARD is not offered
        (VIRTIO_BLK_T_GET_ID, 0, 10, VIRTIO_BLK_S_IOERR),     // id buffer too short
    ];
    for (slot, &(kind, sector, len, _)) in cases.iter().enumerate() {
        request(&mut tq, slot as u64, kind, sector, len);
    }
    assert_eq!(
        blk.process_queue(&mem, &mut q, &hl).completed,
        cases.len() as u32
    );
    for (slot, &(kind, sector, len, want)) in cases.iter().enumerate() {
        assert_eq!(
            status(&tq, slot as u64),
            want,
            "type {kind} sector {sector} len {len}"
        );
    }
    assert_eq!(sector_of(&f, SECTORS - 1), vec![(SECTORS - 1) as u8; 512]);
    // Requests the device refuses are the guest's errors, not a broken device.
    assert!(!hl.is_broken());
    assert_eq!(hl.count(ErrorKind::Request), 6);
}

#[test]
fn malformed_chains_break_the_device_and_stop_the_queue() {
    let f = disk();
    let mem = test_memory();
    let mut blk = Block::new(params(&f)).unwrap();
    let h = HDR;
    let s = STATUS;
    // (what the reason says, descriptors (index, addr, len, flags, next), head). Each bad
    // chain sits between a good request before it (served) and one after it (not served).
    type Descs = Vec<(u16, u64, u32, u16, u16)>;
    let cases: Vec<(&str, Descs, u16)> = vec![
        (
            "outside guest memory",
            vec![
                (2, h, 16, NEXT, 3),
                (3, OUTSIDE, 512, NEXT | WRITE, 4),
                (4, s, 1, WRITE, 0),
            ],
            2,
        ),
        (
            "loop",
            vec![
                (2, h, 16, NEXT, 3),
                (3, DATA, 512, NEXT | WRITE, 4),
                (4, s, 1, NEXT | WRITE, 2),
            ],
            2,
        ),
        (
            "IN request with device-readable data",
            vec![
                (2, h, 16, NEXT, 3),
                (3, DATA, 512, NEXT, 4),
                (4, s, 1, WRITE, 0),
            ],
            2,
        ),
        (
            "descriptor 4 follows a device-writable one",
            vec![
                (2, h, 16, NEXT, 3),
                (3, DATA, 512, NEXT | WRITE, 4),
                (4, s, 1, 0, 0),
            ],
            2,
        ),
        (
            "outside guest memory",
            vec![(2, h, 16, NEXT, 3), (3, OUTSIDE, 1, WRITE, 0)],
            2,
        ),
        ("no usable status descriptor", vec![(2, h, 16, 0, 0)], 2),
        (
            "no usable status descriptor",
            vec![(2, h, 16, NEXT, 3), (3, s, 0, WRITE, 0)],
            2,
        ),
        (
            "header is 8 bytes",
            vec![(2, h, 8, NEXT, 3), (3, s, 1, WRITE, 0)],
            2,
        ),
        ("outside the queue", vec![(2, h, 16, NEXT, 999)], 2),
        ("indirect", vec![(2, DATA, 32, 4, 0)], 2),
        (
            "readable descriptor 4 follows a device-writable",
            vec![
                (2, h, 16, NEXT, 3),
                (3, DATA, 512, NEXT | WRITE, 4),
                (4, DATA, 16, NEXT, 5),
                (5, s, 1, WRITE, 0),
            ],
            2,
        ),
    ];
    for (what, descs, head) in cases {
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 64);
        let mut q = tq.queue();
        tq.write(s, &[SENTINEL]);
        header(&tq, h, VIRTIO_BLK_T_IN, 1);
        // A good request first (descriptors 0 and 1).
        header(&tq, HDR + 0x800, VIRTIO_BLK_T_FLUSH, 0);
        tq.write(STATUS + 8, &[SENTINEL]);
        tq.add_chain(&[(HDR + 0x800, 16, false), (STATUS + 8, 1, true)]);
        for &(i, addr, len, flags, next) in &descs {
            tq.set_desc(i, addr, len, flags, next);
        }
        tq.make_available(head);
        // A good request after it (descriptors 40 and 41).
        tq.set_desc(40, HDR + 0x900, 16, NEXT, 41);
        tq.set_desc(41, STATUS + 9, 1, WRITE, 0);
        header(&tq, HDR + 0x900, VIRTIO_BLK_T_FLUSH, 0);
        tq.write(STATUS + 9, &[SENTINEL]);
        tq.make_available(40);

        let out = blk.process_queue(&mem, &mut q, &hl);
        assert_eq!(
            out,
            QueueOutcome {
                completed: 1,
                throttled: false,
                more: false
            },
            "{what}"
        );
        assert_eq!(tq.used(0), (0, 1), "{what}");
        assert_eq!(status(&tq, 8), VIRTIO_BLK_S_OK, "{what}");
        assert_eq!(
            status(&tq, 0),
            SENTINEL,
            "{what}: the bad chain is not answered"
        );
        assert_eq!(
            status(&tq, 9),
            SENTINEL,
            "{what}: nothing after it is served"
        );
        assert!(
            hl.reason()
                .is_some_and(|r| r.starts_with("chain: ") && r.contains(what)),
            "{what}: {:?}",
            hl.reason()
        );
        assert_eq!(hl.count(ErrorKind::Chain), 1, "{what}");
        // The queue is left at the bad chain: called again, the model stops there again.
        assert_eq!(q.next_avail(), 1, "{what}");
        assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 0, "{what}");
        assert_eq!(tq.used_idx(), 1, "{what}");
    }
}

#[test]
fn impossible_rings_break_the_device() {
    let f = disk();
    let mem = test_memory();
    let mut blk = Block::new(params(&f)).unwrap();
    // The available index jumps by more than the queue size: nothing is served.
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    request(&mut tq, 0, VIRTIO_BLK_T_IN, 0, 512);
    for _ in 0..39 {
        tq.make_available(0);
    }
    assert_eq!(
        blk.process_queue(&mem, &mut q, &hl),
        QueueOutcome::default()
    );
    assert_eq!(status(&tq, 0), SENTINEL);
    assert_eq!(
        hl.reason().as_deref(),
        Some("ring: available index 40 is 40 entries ahead of the device's 0 in a queue of 16")
    );
    // A head outside the queue.
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    tq.make_available(500);
    assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 0);
    assert!(hl.reason().unwrap().contains("head 500"));
    // A used ring outside guest memory: the request runs, cannot be returned, breaks.
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    q.set_used_ring_address(Some(OUTSIDE as u32), Some(0));
    request(&mut tq, 0, VIRTIO_BLK_T_IN, 0, 512);
    request(&mut tq, 1, VIRTIO_BLK_T_IN, 0, 512);
    assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 0);
    assert!(
        hl.reason().unwrap().contains("used ring"),
        "{:?}",
        hl.reason()
    );
    assert_eq!(status(&tq, 1), SENTINEL, "stopped at the first");
    // An available ring outside guest memory.
    let hl = DeviceHealth::new("test");
    let mut q = tq.queue();
    q.set_avail_ring_address(Some(OUTSIDE as u32), Some(0));
    assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 0);
    assert!(hl.reason().unwrap().contains("available ring"));
    assert_eq!(
        blk.stats().failed,
        0,
        "broken rings are not request failures"
    );
}

#[test]
fn work_per_call_is_bounded_by_the_budget() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    let mut blk = Block::new(params(&f)).unwrap();
    blk.budget = 3;
    for slot in 0..5 {
        request(&mut tq, slot, VIRTIO_BLK_T_IN, slot, 512);
    }
    let out = blk.process_queue(&mem, &mut q, &hl);
    assert_eq!((out.completed, out.more), (3, true));
    let out = blk.process_queue(&mem, &mut q, &hl);
    assert_eq!((out.completed, out.more), (2, false));
    assert!(!hl.is_broken());
}

#[test]
fn several_drives_are_independent() {
    let (fa, fb) = (disk(), disk());
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut ta = TestQueue::at(&mem, 0, 16);
    let mut tb = TestQueue::at(&mem, 0x8000, 16);
    let (mut qa, mut qb) = (ta.queue(), tb.queue());
    let mut a = Block::new(params(&fa)).unwrap();
    let mut b = Block::new(BlockParams {
        id: "data".into(),
        read_only: true,
        ..params(&fb)
    })
    .unwrap();
    ta.write(DATA, &[0xA1; 512]);
    request(&mut ta, 0, VIRTIO_BLK_T_OUT, 4, 512);
    header(&tb, HDR + 0x800, VIRTIO_BLK_T_OUT, 4);
    tb.write(DATA + 0x10_0000, &[0xB2; 512]);
    tb.write(STATUS + 8, &[SENTINEL]);
    tb.add_chain(&[
        (HDR + 0x800, 16, false),
        (DATA + 0x10_0000, 512, false),
        (STATUS + 8, 1, true),
    ]);
    assert_eq!(a.process_queue(&mem, &mut qa, &hl).completed, 1);
    assert_eq!(b.process_queue(&mem, &mut qb, &hl).completed, 1);
    assert_eq!(sector_of(&fa, 4), vec![0xA1; 512]);
    assert_eq!(
        sector_of(&fb, 4),
        vec![4u8; 512],
        "read-only drive b unchanged"
    );
    assert_eq!(status(&tb, 8), VIRTIO_BLK_S_IOERR);
    assert_eq!((ta.used_idx(), tb.used_idx()), (1, 1));
    assert_eq!(a.device_id()[..6], *b"rootfs");
    assert_eq!(b.device_id()[..4], *b"data");
}

fn limited(
    f: &tempfile::NamedTempFile,
    cfg: RateLimiterConfig,
) -> (Block, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let (clock, t) = Clock::manual(1_000_000_000);
    let blk = Block::new(BlockParams {
        rate_limiter: Some(cfg),
        clock,
        ..params(f)
    })
    .unwrap();
    (blk, t)
}

#[test]
fn bandwidth_limit_keeps_a_request_queued_until_the_timer_fires() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    // 1024 bytes per 100 ms.
    let (mut blk, t) = limited(
        &f,
        RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1024,
                one_time_burst: None,
                refill_time: 100,
            }),
            ops: None,
        },
    );
    for slot in 0..3 {
        request(&mut tq, slot, VIRTIO_BLK_T_IN, slot, 512);
    }
    let out = blk.process_queue(&mem, &mut q, &hl);
    assert_eq!(
        out,
        QueueOutcome {
            completed: 2,
            throttled: true,
            more: false,
        }
    );
    assert_eq!(tq.used_idx(), 2);
    assert_eq!(status(&tq, 2), SENTINEL, "third request not served");
    assert_eq!(blk.rate_limiter().bandwidth().unwrap().budget(), 0);
    assert!(blk.rate_limiter().is_blocked());

    // Guest notifications while blocked change nothing.
    assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 0);
    assert_eq!(tq.used_idx(), 2);

    // 50 ms of refill is 512 bytes: exactly the third request.
    t.fetch_add(50_000_000, Ordering::AcqRel);
    wait_for_timer(blk.rate_limiter());
    assert_eq!(
        blk.process_queue(&mem, &mut q, &hl).completed,
        0,
        "timer event not handled yet"
    );
    assert!(blk.on_rate_limiter_timer());
    let out = blk.process_queue(&mem, &mut q, &hl);
    assert_eq!(
        out,
        QueueOutcome {
            completed: 1,
            throttled: false,
            more: false,
        }
    );
    assert_eq!(tq.used(2), (6, 513));
    assert_eq!(status(&tq, 2), VIRTIO_BLK_S_OK);
    assert_eq!(tq.read(DATA + 0x2_0000, 512), vec![2u8; 512]);
    assert_eq!(blk.rate_limiter().bandwidth().unwrap().budget(), 0);
    // Refused once, then twice more while blocked.
    assert_eq!(blk.stats().throttled, 3);
}

#[test]
fn ops_limit_counts_every_request_and_burst_comes_first() {
    let f = disk();
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    // 1 op per 100 ms plus a one-time burst of 2.
    let (mut blk, t) = limited(
        &f,
        RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: Some(2),
                refill_time: 100,
            }),
        },
    );
    request(&mut tq, 0, VIRTIO_BLK_T_FLUSH, 0, 0);
    request(&mut tq, 1, VIRTIO_BLK_T_GET_ID, 0, 20);
    request(&mut tq, 2, VIRTIO_BLK_T_IN, 0, 512);
    request(&mut tq, 3, VIRTIO_BLK_T_IN, 1, 512);
    let out = blk.process_queue(&mem, &mut q, &hl);
    assert_eq!(
        out,
        QueueOutcome {
            completed: 3,
            throttled: true,
            more: false,
        }
    );
    let ops = blk.rate_limiter().ops().unwrap();
    assert_eq!((ops.one_time_burst(), ops.budget()), (0, 0));
    t.fetch_add(100_000_000, Ordering::AcqRel);
    wait_for_timer(blk.rate_limiter());
    assert!(blk.on_rate_limiter_timer());
    assert_eq!(blk.process_queue(&mem, &mut q, &hl).completed, 1);
    assert_eq!(status(&tq, 3), VIRTIO_BLK_S_OK);
}

#[test]
fn state_round_trip() {
    let f = disk();
    let (mut blk, _) = limited(
        &f,
        RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 4096,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ops: None,
        },
    );
    let mem = test_memory();
    let hl = DeviceHealth::new("test");
    let mut tq = TestQueue::new(&mem, 16);
    let mut q = tq.queue();
    request(&mut tq, 0, VIRTIO_BLK_T_IN, 0, 1024);
    blk.process_queue(&mem, &mut q, &hl);
    let mut w = Writer::default();
    blk.encode_state(&mut w);
    let bytes = w.into_vec();

    let (clock, _) = Clock::manual(5);
    let p = BlockParams {
        clock,
        ..params(&f)
    };
    let mut r = Reader::new(&bytes);
    let back = Block::restore(p.clone(), &mut r).unwrap();
    r.finish("block").unwrap();
    assert_eq!(back.rate_limiter().bandwidth().unwrap().budget(), 3072);
    assert_eq!(back.nsectors(), SECTORS);

    let wrong = BlockParams {
        id: "other".into(),
        ..p.clone()
    };
    let err = Block::restore(wrong, &mut Reader::new(&bytes)).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    for cut in 0..bytes.len() {
        assert!(Block::restore(p.clone(), &mut Reader::new(&bytes[..cut])).is_err());
    }
}

#[test]
fn config_space_and_open_errors() {
    let f = disk();
    let blk = Block::new(params(&f)).unwrap();
    let mut b = [0xFFu8; 8];
    blk.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), SECTORS);
    let mut hi = [0xFFu8; 4];
    blk.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mut beyond = [0xFFu8; 4];
    blk.read_config(0x100, &mut beyond);
    assert_eq!(beyond, [0; 4]);

    let missing = Block::new(BlockParams {
        path: "/nonexistent/disk.img".into(),
        ..params(&f)
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/disk.img"),
        "{missing}"
    );
    let empty = tempfile::NamedTempFile::new().unwrap();
    let tiny = Block::new(params(&empty)).unwrap_err();
    assert!(
        tiny.to_string().contains("smaller than one sector"),
        "{tiny}"
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Block::new(BlockParams {
            path: dir.path().into(),
            read_only: true,
            ..params(&f)
        })
        .is_err()
    );
}

#[test]
fn device_face_wakes_on_its_rate_limiter_timer() {
    use crate::devices::virtio::testing::Harness;
    use crate::devices::virtio::{DeviceEvent, TYPE_BLOCK, VirtioDevice};

    let f = disk();
    let (mut blk, t) = limited(
        &f,
        RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: None,
                refill_time: 50,
            }),
        },
    );
    assert_eq!(blk.device_type(), TYPE_BLOCK);
    assert_eq!(VirtioDevice::id(&blk), "rootfs");
    let mut h = Harness::new(&[QUEUE_SIZE]);
    let mut gq = h.guest_queue(0, 0, 16);
    blk.activate(&mut h.ctx()).unwrap();
    for slot in 0..2u64 {
        let (hdr, st) = (HDR + slot * 0x100, STATUS + slot);
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
        vm_memory::Bytes::write_slice(&h.mem, &b, vm_memory::GuestAddress(hdr)).unwrap();
        gq.add_chain(&h.mem, &[(hdr, 16, false), (st, 1, true)]);
    }
    blk.handle_event(DeviceEvent::Queue(0), &mut h.ctx());
    assert_eq!(gq.next_used(&h.mem), Some((0, 1)));
    assert_eq!(
        gq.next_used(&h.mem),
        None,
        "second flush waits for an op token"
    );
    assert_eq!(h.interrupts(), 1);

    // The limiter's timer is on the device thread's epoll set; its event resumes the queue.
    t.fetch_add(50_000_000, Ordering::AcqRel);
    let events = h.poll(5_000);
    assert_eq!(events.len(), 1, "{events:?}");
    let (token, readiness) = events[0];
    blk.handle_event(DeviceEvent::Fd { token, readiness }, &mut h.ctx());
    assert_eq!(gq.next_used(&h.mem), Some((2, 1)));
    assert_eq!(h.interrupts(), 1);

    blk.reset(&h.events);
    assert!(h.poll(0).is_empty());
}

#[test]
fn root_drive_goes_first_and_on_the_command_line() {
    let drive = |id: &str, root: bool, ro: Option<bool>, partuuid: Option<&str>| Drive {
        drive_id: id.into(),
        path_on_host: Some("/x".into()),
        is_root_device: root,
        is_read_only: ro,
        partuuid: partuuid.map(Into::into),
        cache_type: None,
        rate_limiter: None,
        io_engine: None,
        socket: None,
    };
    let drives = [
        drive("data", false, Some(true), None),
        drive("rootfs", true, None, None),
        drive("scratch", false, None, None),
    ];
    let order: Vec<&str> = slot_order(&drives).map(|d| d.drive_id.as_str()).collect();
    assert_eq!(order, ["rootfs", "data", "scratch"]);
    assert_eq!(root_args(&drives), " root=/dev/vda rw");
    assert_eq!(root_args(&drives[..1]), "");
    assert_eq!(
        root_args(&[drive("r", true, Some(true), Some("abcd-01"))]),
        " root=PARTUUID=abcd-01 ro"
    );
}
