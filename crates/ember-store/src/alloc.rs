//! The allocator: picks the lowest free IPv4 address, MAC, vsock CID and TAP name for an owner
//! (a sandbox) inside the caller's write transaction, and records them.
//!
//! Because the read of what is taken and the insert of the new allocation happen in the same
//! `BEGIN IMMEDIATE` transaction, two writers (threads or processes) can never pick the same value;
//! the table's `UNIQUE` constraints are the last line of defence should that reasoning ever break.
//! Release is the deletion of the owner's row. This module does not know what an owner is beyond
//! its key.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ember_core::MacAddr;
use rusqlite::{Connection, params};

use crate::error::{Resource, StoreError};
use crate::network::{NetworkAllocation, NetworkConfig, mac_for_ip};
use crate::sql::Failure;

/// The lowest value in `first..=last` for which `taken` is false, or `None` if all are taken.
///
/// Each step past a value is caused by a taken value, so this runs in O(number of taken values).
pub(crate) fn first_free(first: u64, last: u64, taken: impl Fn(u64) -> bool) -> Option<u64> {
    if first > last {
        return None;
    }
    let mut candidate = first;
    loop {
        if !taken(candidate) {
            return Some(candidate);
        }
        if candidate == last {
            return None;
        }
        candidate += 1;
    }
}

/// Runs `sql` (one integer column) and collects the values.
fn int_set(tx: &Connection, sql: &str) -> rusqlite::Result<HashSet<i64>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    rows.collect()
}

/// Runs `sql` (one text column) and collects the values.
fn text_set(tx: &Connection, sql: &str) -> rusqlite::Result<HashSet<String>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// Picks a free allocation under `config` and records it for `owner`.
pub(crate) fn allocate(
    tx: &Connection,
    config: &NetworkConfig,
    owner: &str,
) -> Result<NetworkAllocation, Failure> {
    let ips = int_set(tx, "SELECT ip FROM net_allocations")?;
    let macs = text_set(tx, "SELECT mac FROM net_allocations")?;
    let cids = int_set(tx, "SELECT vsock_cid FROM net_allocations")?;
    let taps = text_set(tx, "SELECT tap FROM net_allocations")?;

    let (first_ip, last_ip) = config.subnet.host_range();
    let gateway = u32::from(config.gateway);
    let ip = first_free(
        u64::from(u32::from(first_ip)),
        u64::from(u32::from(last_ip)),
        |c| {
            let Ok(c32) = u32::try_from(c) else {
                return true;
            };
            c32 == gateway
                || ips.contains(&i64::from(c32))
                || macs.contains(&mac_for_ip(Ipv4Addr::from(c32)).to_string())
        },
    )
    .and_then(|v| u32::try_from(v).ok())
    .map(Ipv4Addr::from)
    .ok_or_else(|| {
        Failure::Store(StoreError::Exhausted {
            resource: Resource::Ipv4,
            range: config.describe_ipv4(),
            in_use: count_in(
                &ips,
                u64::from(u32::from(first_ip)),
                u64::from(u32::from(last_ip)),
            ),
        })
    })?;
    let mac: MacAddr = mac_for_ip(ip);

    let cid = first_free(
        u64::from(config.first_cid),
        u64::from(config.last_cid),
        |c| i64::try_from(c).is_ok_and(|c| cids.contains(&c)),
    )
    .and_then(|v| u32::try_from(v).ok())
    .ok_or_else(|| {
        Failure::Store(StoreError::Exhausted {
            resource: Resource::VsockCid,
            range: config.describe_cids(),
            in_use: count_in(
                &cids,
                u64::from(config.first_cid),
                u64::from(config.last_cid),
            ),
        })
    })?;

    let tap_index = first_free(0, u64::from(config.last_tap_index), |i| {
        u32::try_from(i).map_or(true, |i| taps.contains(&config.tap_name(i)))
    })
    .and_then(|v| u32::try_from(v).ok())
    .ok_or_else(|| {
        let in_use = (0..=config.last_tap_index)
            .filter(|i| taps.contains(&config.tap_name(*i)))
            .count();
        Failure::Store(StoreError::Exhausted {
            resource: Resource::TapName,
            range: config.describe_taps(),
            in_use: in_use as u64,
        })
    })?;
    let tap = config.tap_name(tap_index);

    let allocation = NetworkAllocation {
        tap,
        ip,
        prefix_len: config.subnet.prefix_len(),
        gateway: config.gateway,
        mac,
        vsock_cid: cid,
    };
    insert(tx, owner, &allocation)?;
    Ok(allocation)
}

/// How many of `set`'s values fall in `first..=last`.
fn count_in(set: &HashSet<i64>, first: u64, last: u64) -> u64 {
    set.iter()
        .filter(|v| u64::try_from(**v).is_ok_and(|v| (first..=last).contains(&v)))
        .count() as u64
}

/// Records `a` for `owner`.
fn insert(tx: &Connection, owner: &str, a: &NetworkAllocation) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO net_allocations (owner, tap, ip, prefix_len, gateway, mac, vsock_cid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        owner,
        a.tap,
        i64::from(u32::from(a.ip)),
        i64::from(a.prefix_len),
        i64::from(u32::from(a.gateway)),
        a.mac.to_string(),
        i64::from(a.vsock_cid),
    ])?;
    Ok(())
}

/// The allocation recorded for `owner`, if any.
pub(crate) fn load(conn: &Connection, owner: &str) -> Result<Option<NetworkAllocation>, Failure> {
    let mut stmt = conn.prepare_cached(
        "SELECT tap, ip, prefix_len, gateway, mac, vsock_cid FROM net_allocations WHERE owner = ?1",
    )?;
    let mut rows = stmt.query([owner])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let bad = |column: &'static str, reason: String| {
        Failure::decode(
            crate::error::RecordKind::Sandbox,
            owner,
            crate::columns::Decode::new(column, reason),
        )
    };
    let ip: i64 = row.get(1)?;
    let gateway: i64 = row.get(3)?;
    let ip = u32::try_from(ip).map_err(|_| bad("ip", format!("{ip} is not an IPv4 address")))?;
    let gateway = u32::try_from(gateway)
        .map_err(|_| bad("gateway", format!("{gateway} is not an IPv4 address")))?;
    let mac: String = row.get(4)?;
    let mac = mac
        .parse::<MacAddr>()
        .map_err(|e| bad("mac", e.to_string()))?;
    let prefix: i64 = row.get(2)?;
    let cid: i64 = row.get(5)?;
    Ok(Some(NetworkAllocation {
        tap: row.get(0)?,
        ip: Ipv4Addr::from(ip),
        prefix_len: crate::columns::sql_to_uint("prefix_len", prefix)
            .map_err(|d| bad(d.column, d.reason))?,
        gateway: Ipv4Addr::from(gateway),
        mac,
        vsock_cid: crate::columns::sql_to_uint("vsock_cid", cid)
            .map_err(|d| bad(d.column, d.reason))?,
    }))
}

/// The owners of every allocation whose owner key starts with `prefix`, sorted.
pub(crate) fn owners_with_prefix(conn: &Connection, prefix: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT owner FROM net_allocations WHERE substr(owner, 1, length(?1)) = ?1 ORDER BY owner",
    )?;
    let rows = stmt.query_map([prefix], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// Deletes `owner`'s allocation; returns whether there was one.
pub(crate) fn release(tx: &Connection, owner: &str) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached("DELETE FROM net_allocations WHERE owner = ?1")?
        .execute([owner])?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_free_skips_taken_values() {
        let taken: HashSet<u64> = [1, 2, 4].into_iter().collect();
        assert_eq!(first_free(1, 10, |v| taken.contains(&v)), Some(3));
        assert_eq!(first_free(4, 4, |v| taken.contains(&v)), None);
        assert_eq!(first_free(5, 4, |_| false), None);
        assert_eq!(first_free(u64::MAX, u64::MAX, |_| false), Some(u64::MAX));
    }

    proptest! {
        #[test]
        fn first_free_is_the_lowest_untaken(first in 0u64..50, len in 0u64..50, taken in proptest::collection::hash_set(0u64..120, 0..80)) {
            let last = first + len;
            let got = first_free(first, last, |v| taken.contains(&v));
            let want = (first..=last).find(|v| !taken.contains(v));
            prop_assert_eq!(got, want);
        }
    }
}
