//! Rows of `machines` (joined with `net_allocations`): encode a [`Machine`], decode a
//! [`MachineRecord`], insert, select, update and delete.
//!
//! The data columns are listed once, in [`DATA_COLUMNS`]; the insert and update statements are
//! generated from that list so they cannot drift apart.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::LazyLock;

use ember_core::{MacAddr, SnapshotId, VmId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::columns::{
    Decode, StackColumns, columns_stack, ms_to_time, sql_to_uint, stack_columns, u64_to_sql,
};
use crate::error::{RecordKind, StoreError};
use crate::machine::{BlockDevice, Machine, MachineRecord, MachineState};
use crate::names::MachineName;
use crate::network::NetworkAllocation;
use crate::process::ProcessIdentity;
use crate::sql::Failure;

/// The columns a [`Machine`] is stored in, in the order [`encode`] produces their values.
const DATA_COLUMNS: [&str; 25] = [
    "vm_id",
    "state",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "kernel",
    "cmdline",
    "block_devices",
    "distro",
    "distro_version",
    "disk_path",
    "ssh_key_path",
    "stack_name",
    "stack_version",
    "stack_vcpus",
    "stack_mem_mib",
    "source_snapshot",
    "tenant",
    "vmm_pid",
    "vmm_start_time",
    "vmm_boot_id",
    "api_socket",
    "console_log",
    "vsock_uds",
    "run_dir",
];

/// `?1` name, `?2` now, `?3..` data columns.
static INSERT: LazyLock<String> = LazyLock::new(|| {
    let params: Vec<String> = (0..DATA_COLUMNS.len())
        .map(|i| format!("?{}", i + 3))
        .collect();
    format!(
        "INSERT INTO machines (name, created_at_ms, updated_at_ms, revision, {}) VALUES (?1, ?2, ?2, 1, {})",
        DATA_COLUMNS.join(", "),
        params.join(", ")
    )
});

/// `?1` row id, `?2` now, `?3..` data columns.
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = DATA_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 3))
        .collect();
    format!(
        "UPDATE machines SET updated_at_ms = ?2, revision = revision + 1, {} WHERE id = ?1",
        sets.join(", ")
    )
});

const SELECT: &str = "SELECT m.*, a.tap, a.ip, a.prefix_len, a.gateway, a.mac, a.vsock_cid
    FROM machines m LEFT JOIN net_allocations a ON a.machine_id = m.id";

fn text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

fn path(field: &str, p: Option<&PathBuf>) -> Result<Value, StoreError> {
    Ok(text(crate::columns::opt_path_text(
        field,
        p.map(PathBuf::as_path),
    )?))
}

fn int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::Integer)
}

/// A validated [`Machine`] as the values of [`DATA_COLUMNS`].
fn encode(m: &Machine) -> Result<Vec<Value>, StoreError> {
    let block_devices = serde_json::to_string(&m.block_devices)
        .map_err(|e| StoreError::invalid("machine.block_devices", e.to_string()))?;
    let (stack_name, stack_version, stack_vcpus, stack_mem) = stack_columns(m.stack.as_ref());
    let (pid, start, boot) = match &m.vmm {
        Some(p) => (
            Some(i64::from(p.pid)),
            Some(u64_to_sql("machine.vmm.start_time", p.start_time)?),
            Some(p.boot_id.as_str()),
        ),
        None => (None, None, None),
    };
    Ok(vec![
        Value::Text(m.vm_id.to_string()),
        Value::Text(m.state.as_str().to_string()),
        Value::Integer(i64::from(m.vcpus)),
        Value::Integer(i64::from(m.memory_mib)),
        Value::Integer(u64_to_sql("machine.disk_gib", m.disk_gib)?),
        path("machine.kernel", m.kernel.as_ref())?,
        text(m.cmdline.as_deref()),
        Value::Text(block_devices),
        text(m.distro.as_deref()),
        text(m.distro_version.as_deref()),
        path("machine.disk_path", m.disk_path.as_ref())?,
        path("machine.ssh_key_path", m.ssh_key_path.as_ref())?,
        text(stack_name.as_deref()),
        text(stack_version.as_deref()),
        int(stack_vcpus),
        int(stack_mem),
        text(m.source_snapshot.as_ref().map(SnapshotId::as_str)),
        text(m.tenant.as_deref()),
        int(pid),
        int(start),
        text(boot),
        path("machine.api_socket", m.api_socket.as_ref())?,
        path("machine.console_log", m.console_log.as_ref())?,
        path("machine.vsock_uds", m.vsock_uds.as_ref())?,
        path("machine.run_dir", m.run_dir.as_ref())?,
    ])
}

/// Inserts a new row for `name` and returns its row id.
pub(crate) fn insert(
    conn: &Connection,
    name: &MachineName,
    m: &Machine,
    now_ms: i64,
) -> Result<i64, Failure> {
    let mut values = vec![Value::Text(name.to_string()), Value::Integer(now_ms)];
    values.extend(encode(m)?);
    conn.prepare_cached(&INSERT)?
        .execute(params_from_iter(values))?;
    Ok(conn.last_insert_rowid())
}

/// Rewrites the data columns of row `id`, bumping its revision.
pub(crate) fn update(conn: &Connection, id: i64, m: &Machine, now_ms: i64) -> Result<(), Failure> {
    let mut values = vec![Value::Integer(id), Value::Integer(now_ms)];
    values.extend(encode(m)?);
    conn.prepare_cached(&UPDATE)?
        .execute(params_from_iter(values))?;
    Ok(())
}

/// Deletes row `id` and its network allocation (also cascaded by the foreign key).
pub(crate) fn delete(conn: &Connection, id: i64) -> Result<(), Failure> {
    conn.prepare_cached("DELETE FROM net_allocations WHERE machine_id = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("DELETE FROM machines WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// The row id and record of `name`, if stored.
pub(crate) fn load(
    conn: &Connection,
    name: &MachineName,
) -> Result<Option<(i64, MachineRecord)>, Failure> {
    let raw = conn
        .prepare_cached(&format!("{SELECT} WHERE m.name = ?1"))?
        .query_row([name.as_str()], Raw::read)
        .optional()?;
    raw.map(Raw::decode).transpose()
}

/// Every record, by name; only those in `states` if given.
pub(crate) fn list(
    conn: &Connection,
    states: Option<&[MachineState]>,
) -> Result<Vec<MachineRecord>, Failure> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY m.name"))?;
    let raws = stmt
        .query_map([], Raw::read)?
        .collect::<rusqlite::Result<Vec<Raw>>>()?;
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        let (_, record) = raw.decode()?;
        if states.is_none_or(|s| s.contains(&record.machine.state)) {
            out.push(record);
        }
    }
    Ok(out)
}

/// Names of the machines restored from snapshot `id`.
pub(crate) fn users_of_snapshot(conn: &Connection, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT name FROM machines WHERE source_snapshot = ?1 ORDER BY name")?;
    stmt.query_map([id], |r| r.get(0))?.collect()
}

/// A row as SQLite gives it, before validation.
struct Raw {
    id: i64,
    name: String,
    vm_id: String,
    state: String,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    kernel: Option<String>,
    cmdline: Option<String>,
    block_devices: String,
    distro: Option<String>,
    distro_version: Option<String>,
    disk_path: Option<String>,
    ssh_key_path: Option<String>,
    stack: StackColumns,
    source_snapshot: Option<String>,
    tenant: Option<String>,
    vmm: (Option<i64>, Option<i64>, Option<String>),
    api_socket: Option<String>,
    console_log: Option<String>,
    vsock_uds: Option<String>,
    run_dir: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    revision: i64,
    net: NetColumns,
}

/// tap, ip, prefix_len, gateway, mac, vsock_cid (all NULL without an allocation).
type NetColumns = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

impl Raw {
    fn read(r: &Row<'_>) -> rusqlite::Result<Raw> {
        Ok(Raw {
            id: r.get("id")?,
            name: r.get("name")?,
            vm_id: r.get("vm_id")?,
            state: r.get("state")?,
            vcpus: r.get("vcpus")?,
            memory_mib: r.get("memory_mib")?,
            disk_gib: r.get("disk_gib")?,
            kernel: r.get("kernel")?,
            cmdline: r.get("cmdline")?,
            block_devices: r.get("block_devices")?,
            distro: r.get("distro")?,
            distro_version: r.get("distro_version")?,
            disk_path: r.get("disk_path")?,
            ssh_key_path: r.get("ssh_key_path")?,
            stack: (
                r.get("stack_name")?,
                r.get("stack_version")?,
                r.get("stack_vcpus")?,
                r.get("stack_mem_mib")?,
            ),
            source_snapshot: r.get("source_snapshot")?,
            tenant: r.get("tenant")?,
            vmm: (
                r.get("vmm_pid")?,
                r.get("vmm_start_time")?,
                r.get("vmm_boot_id")?,
            ),
            api_socket: r.get("api_socket")?,
            console_log: r.get("console_log")?,
            vsock_uds: r.get("vsock_uds")?,
            run_dir: r.get("run_dir")?,
            created_at_ms: r.get("created_at_ms")?,
            updated_at_ms: r.get("updated_at_ms")?,
            revision: r.get("revision")?,
            net: (
                r.get("tap")?,
                r.get("ip")?,
                r.get("prefix_len")?,
                r.get("gateway")?,
                r.get("mac")?,
                r.get("vsock_cid")?,
            ),
        })
    }

    fn decode(self) -> Result<(i64, MachineRecord), Failure> {
        let key = self.name.clone();
        let id = self.id;
        self.decode_inner()
            .map(|record| (id, record))
            .map_err(|problem| Failure::decode(RecordKind::Machine, key, problem))
    }

    fn decode_inner(self) -> Result<MachineRecord, Decode> {
        let name = MachineName::new(self.name).map_err(|e| Decode::new("name", e))?;
        let vmm = match self.vmm {
            (None, None, None) => None,
            (Some(pid), Some(start), Some(boot_id)) => Some(ProcessIdentity {
                pid: sql_to_uint("vmm_pid", pid)?,
                start_time: sql_to_uint("vmm_start_time", start)?,
                boot_id,
            }),
            _ => {
                return Err(Decode::new(
                    "vmm_pid",
                    "only some of the VMM columns are set",
                ));
            }
        };
        let block_devices: Vec<BlockDevice> = serde_json::from_str(&self.block_devices)
            .map_err(|e| Decode::new("block_devices", e))?;
        let machine = Machine {
            vm_id: VmId::new(self.vm_id).map_err(|e| Decode::new("vm_id", e))?,
            state: self.state.parse().map_err(|e| Decode::new("state", e))?,
            vcpus: sql_to_uint("vcpus", self.vcpus)?,
            memory_mib: sql_to_uint("memory_mib", self.memory_mib)?,
            disk_gib: sql_to_uint("disk_gib", self.disk_gib)?,
            kernel: self.kernel.map(PathBuf::from),
            cmdline: self.cmdline,
            block_devices,
            distro: self.distro,
            distro_version: self.distro_version,
            disk_path: self.disk_path.map(PathBuf::from),
            ssh_key_path: self.ssh_key_path.map(PathBuf::from),
            stack: columns_stack(self.stack)?,
            source_snapshot: self
                .source_snapshot
                .map(SnapshotId::new)
                .transpose()
                .map_err(|e| Decode::new("source_snapshot", e))?,
            tenant: self.tenant,
            vmm,
            api_socket: self.api_socket.map(PathBuf::from),
            console_log: self.console_log.map(PathBuf::from),
            vsock_uds: self.vsock_uds.map(PathBuf::from),
            run_dir: self.run_dir.map(PathBuf::from),
        };
        Ok(MachineRecord {
            name,
            machine,
            network: decode_net(self.net)?,
            created_at: ms_to_time("created_at_ms", self.created_at_ms)?,
            updated_at: ms_to_time("updated_at_ms", self.updated_at_ms)?,
            revision: sql_to_uint("revision", self.revision)?,
        })
    }
}

fn decode_net(net: NetColumns) -> Result<Option<NetworkAllocation>, Decode> {
    match net {
        (None, None, None, None, None, None) => Ok(None),
        (Some(tap), Some(ip), Some(prefix_len), Some(gateway), Some(mac), Some(cid)) => {
            let ip: u32 = sql_to_uint("ip", ip)?;
            let gateway: u32 = sql_to_uint("gateway", gateway)?;
            Ok(Some(NetworkAllocation {
                tap,
                ip: Ipv4Addr::from(ip),
                prefix_len: sql_to_uint("prefix_len", prefix_len)?,
                gateway: Ipv4Addr::from(gateway),
                mac: mac.parse::<MacAddr>().map_err(|e| Decode::new("mac", e))?,
                vsock_cid: sql_to_uint("vsock_cid", cid)?,
            }))
        }
        _ => Err(Decode::new(
            "net_allocations",
            "only some allocation columns are set",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_statements_cover_every_data_column() {
        for c in DATA_COLUMNS {
            assert!(INSERT.contains(c), "{c}");
            assert!(UPDATE.contains(&format!("{c} = ")), "{c}");
        }
        assert!(INSERT.ends_with(&format!("?{})", DATA_COLUMNS.len() + 2)));
        let m = Machine::new(VmId::new("vm").unwrap(), 1, 128);
        assert_eq!(encode(&m).unwrap().len(), DATA_COLUMNS.len());
    }
}
