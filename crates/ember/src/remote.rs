//! The CLI as a client of emberd: one function per command (`ember template|pool|run|exec|cp|
//! ls|inspect|pause|resume|rm|timeout|network|expose|info`), each a few API calls through
//! [`emberd::client::Client`], printing a table (or JSON with `--json`). Output goes to the
//! [`Out`] the caller gives, so tests can read it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ember_core::{
    EgressAction, EgressPolicy, EgressRule, Ipv4Cidr, Pooled, PortRange, Protocol, Sandbox,
    SandboxState, TemplateName, TemplateSpec,
};
use emberd::api::sandboxes::ExecEvent;
use emberd::client::{Client, ClientError};
use emberd::engine::guest::ExecRequest;
use emberd::engine::pools::{PoolStatus, SetPool};
use emberd::engine::sandboxes::CreateSandbox;
use emberd::engine::templates::BuildTemplate;
use serde::Serialize;

use crate::output::table;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The daemon refused or failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A user's argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// A local file could not be used.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Printing failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Where a command prints, and how.
pub struct Out<'a> {
    /// Standard output.
    pub stdout: &'a mut dyn Write,
    /// Standard error (progress, the command's stderr for exec).
    pub stderr: &'a mut dyn Write,
    /// JSON instead of tables.
    pub json: bool,
}

impl Out<'_> {
    fn json(&mut self, v: &impl Serialize) -> Result<(), RemoteError> {
        let text = serde_json::to_string_pretty(v)
            .map_err(|e| RemoteError::Usage(format!("encoding JSON: {e}")))?;
        writeln!(self.stdout, "{text}")?;
        Ok(())
    }
}

/// Parses `300`, `300s`, `5m`, `2h`, `1d` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 300s, 5m, 2h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Parses `KEY=VALUE` pairs.
pub fn parse_pairs(what: &str, pairs: &[String]) -> Result<BTreeMap<String, String>, RemoteError> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| RemoteError::Usage(format!("--{what} {p:?}: expected KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn until(t: Option<SystemTime>) -> String {
    match t {
        None => "-".into(),
        Some(t) => match t.duration_since(SystemTime::now()) {
            Ok(d) => format!("in {}s", d.as_secs()),
            Err(_) => "due".into(),
        },
    }
}

/// What to boot for `ember template build`.
#[derive(Debug, Clone, Default)]
pub struct TemplateArgs {
    /// An image made by `ember image build` (its directory).
    pub image: Option<PathBuf>,
    /// An image emberd builds first (the template's guest is `image`).
    pub build_image: Option<ember_core::ImageSource>,
    /// A kernel image (instead of the probe guest).
    pub kernel: Option<PathBuf>,
    /// Its initrd.
    pub initrd: Option<PathBuf>,
    /// Its root filesystem.
    pub rootfs: Option<PathBuf>,
    /// Attach the root filesystem read-only.
    pub rootfs_read_only: bool,
    /// The guest agent's vsock port (default: the probe's).
    pub agent_port: Option<u32>,
    /// Boot to the agent's first answer may take this long, ms.
    pub boot_timeout_ms: Option<u64>,
    /// Kernel command line (added to the probe's).
    pub boot_args: Option<String>,
    /// vCPUs.
    pub vcpus: Option<u8>,
    /// Memory, MiB.
    pub mem_mib: Option<u32>,
    /// Give the guest a network interface (`spec.network`).
    pub network: bool,
}

/// `ember template build NAME`.
pub async fn template_build(
    client: &Client,
    out: &mut Out<'_>,
    name: &str,
    args: TemplateArgs,
) -> Result<(), RemoteError> {
    let name = TemplateName::new(name).map_err(|e| RemoteError::Usage(e.to_string()))?;
    let mut spec = TemplateSpec::probe();
    if let Some(dir) = args.image {
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let manifest = ember_host::image::ImageManifest::read(&dir)
            .map_err(|e| RemoteError::Usage(format!("--image: {e}")))?;
        spec = manifest.template;
        if let (Some(extra), ember_core::GuestSpec::Kernel { boot_args, .. }) =
            (args.boot_args, &mut spec.guest)
        {
            *boot_args = Some(match boot_args.take() {
                Some(own) => format!("{own} {extra}"),
                None => extra,
            });
        }
    } else if let Some(source) = args.build_image {
        if args.boot_args.is_some() || args.rootfs_read_only {
            return Err(RemoteError::Usage(
                "--boot-args and --rootfs-read-only do not apply to an image emberd builds (its \
                 command line and read-only root are the image's)"
                    .into(),
            ));
        }
        spec.guest = ember_core::GuestSpec::Image { source };
        spec.mem_size_mib = ember_host::image::TEMPLATE_MEM_MIB;
    } else if let Some(kernel) = args.kernel {
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        spec.guest = ember_core::GuestSpec::Kernel {
            kernel: abs(kernel),
            initrd: args.initrd.map(abs),
            boot_args: args.boot_args,
            rootfs: args.rootfs.map(abs),
            rootfs_read_only: args.rootfs_read_only,
        };
    } else {
        if args.initrd.is_some() || args.rootfs.is_some() || args.rootfs_read_only {
            return Err(RemoteError::Usage(
                "--initrd, --rootfs and --rootfs-read-only need --kernel (the probe guest has \
                 neither)"
                    .into(),
            ));
        }
        spec.guest = ember_core::GuestSpec::Probe {
            boot_args: args.boot_args,
        };
    }
    if let Some(v) = args.vcpus {
        spec.vcpu_count = v;
    }
    if let Some(m) = args.mem_mib {
        spec.mem_size_mib = m;
    }
    if let Some(port) = args.agent_port {
        spec.agent_port = port;
    }
    if let Some(ms) = args.boot_timeout_ms {
        spec.boot_timeout_ms = ms;
    }
    spec.network = args.network;
    let t = client.build_template(&BuildTemplate { name, spec }).await?;
    if out.json {
        return out.json(&t);
    }
    writeln!(
        out.stdout,
        "template {} ready (snapshot {}, boot to agent {:.1} ms)",
        t.name,
        t.snapshot
            .as_ref()
            .map_or("-".to_string(), |s| s.to_string()),
        t.build.map_or(0.0, |b| b.boot_to_agent_ms)
    )?;
    Ok(())
}

/// `ember template ls`.
pub async fn template_ls(client: &Client, out: &mut Out<'_>) -> Result<(), RemoteError> {
    let ts = client.templates().await?;
    if out.json {
        return out.json(&ts);
    }
    let rows: Vec<Vec<String>> = ts
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.state.to_string(),
                format!("{} vCPU / {} MiB", t.spec.vcpu_count, t.spec.mem_size_mib),
                t.snapshot.as_ref().map_or("-".into(), |s| s.to_string()),
                ago(t.created_at),
            ]
        })
        .collect();
    write!(
        out.stdout,
        "{}",
        table(&["NAME", "STATE", "SHAPE", "SNAPSHOT", "AGE"], &rows)
    )?;
    Ok(())
}

/// `ember template rm NAME`.
pub async fn template_rm(
    client: &Client,
    out: &mut Out<'_>,
    name: &str,
) -> Result<(), RemoteError> {
    let t = client.delete_template(name).await?;
    if out.json {
        return out.json(&t);
    }
    writeln!(out.stdout, "template {} deleted", t.name)?;
    Ok(())
}

/// What `ember pool set` asks.
#[derive(Debug, Clone)]
pub struct PoolArgs {
    /// Minimum depth.
    pub min: u32,
    /// Maximum depth.
    pub max: Option<u32>,
    /// Pooled VMs wait paused.
    pub paused: bool,
    /// Max age, seconds.
    pub max_age_secs: Option<u64>,
    /// Restores at once.
    pub parallelism: Option<u32>,
    /// Wait (with a progress bar) until the pool is full.
    pub wait: bool,
}

/// `ember pool set TEMPLATE`; with `wait`, `progress` is called with (depth, target) until
/// full.
pub async fn pool_set(
    client: &Client,
    out: &mut Out<'_>,
    template: &str,
    args: PoolArgs,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), RemoteError> {
    let mut status = client
        .set_pool(
            template,
            &SetPool {
                min_depth: args.min,
                max_depth: args.max,
                pooled: if args.paused {
                    Pooled::Paused
                } else {
                    Pooled::Running
                },
                max_age_secs: args.max_age_secs,
                refill_parallelism: args.parallelism,
            },
        )
        .await?;
    if args.wait {
        let t0 = std::time::Instant::now();
        while status.depth < status.spec.min_depth as usize {
            progress(status.depth, status.spec.min_depth as usize);
            if t0.elapsed() > Duration::from_secs(300) {
                return Err(RemoteError::Usage(format!(
                    "the pool did not fill within 300 s (last error: {})",
                    status.last_error.unwrap_or_else(|| "none".into())
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            status = client.pool(template).await?;
        }
        progress(status.depth, status.spec.min_depth as usize);
    }
    if out.json {
        return out.json(&status);
    }
    print_pools(out, &[status])
}

fn print_pools(out: &mut Out<'_>, pools: &[PoolStatus]) -> Result<(), RemoteError> {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.spec.template.to_string(),
                format!("{}/{}", p.spec.min_depth, p.spec.max_depth),
                p.depth.to_string(),
                p.in_flight.to_string(),
                p.spec.pooled.to_string(),
                if p.failing {
                    format!("failing: {}", p.last_error.clone().unwrap_or_default())
                } else {
                    "ok".into()
                },
            ]
        })
        .collect();
    write!(
        out.stdout,
        "{}",
        table(
            &[
                "TEMPLATE",
                "MIN/MAX",
                "READY",
                "RESTORING",
                "POOLED",
                "STATUS"
            ],
            &rows
        )
    )?;
    Ok(())
}

/// `ember pool ls`.
pub async fn pool_ls(client: &Client, out: &mut Out<'_>) -> Result<(), RemoteError> {
    let pools = client.pools().await?;
    if out.json {
        return out.json(&pools);
    }
    print_pools(out, &pools)
}

/// `ember pool rm TEMPLATE`.
pub async fn pool_rm(
    client: &Client,
    out: &mut Out<'_>,
    template: &str,
) -> Result<(), RemoteError> {
    let p = client.delete_pool(template).await?;
    if out.json {
        return out.json(&p);
    }
    writeln!(out.stdout, "pool of {} deleted", p.template)?;
    Ok(())
}

/// Parses `--egress`: `allow` or `deny`.
pub fn parse_egress_action(s: &str) -> Result<EgressAction, String> {
    match s {
        "allow" => Ok(EgressAction::Allow),
        "deny" => Ok(EgressAction::Deny),
        _ => Err(format!("{s:?} is neither allow nor deny")),
    }
}

/// The syntax of an `--allow`/`--deny` rule, for messages.
const RULE_SYNTAX: &str = "CIDR[:PORTS][/tcp|/udp], e.g. 10.0.0.0/8, 1.1.1.1:443, \
                           10.1.2.3:8000-8080/tcp";

/// Parses an `--allow`/`--deny` RULE: `CIDR[:PORTS][/tcp|/udp]` — an address or network, then
/// optionally a port or an inclusive range, then optionally the protocol. The CIDR has a `/` of
/// its own; a trailing `/WORD` is a protocol only when it is letters (`/tcp`, `/udp`).
pub fn parse_rule(s: &str) -> Result<EgressRule, String> {
    if s.trim().is_empty() {
        return Err(format!("an empty rule; expected {RULE_SYNTAX}"));
    }
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((rest, word)) if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic()) => {
            let p = match word.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => {
                    return Err(format!(
                        "{word:?} is not a protocol: tcp or udp ({RULE_SYNTAX})"
                    ));
                }
            };
            (rest, Some(p))
        }
        _ => (s, None),
    };
    let (cidr, ports) = match rest.split_once(':') {
        None => (rest, None),
        Some((_, "")) => {
            return Err(format!("no ports after ':' ({RULE_SYNTAX})"));
        }
        Some((cidr, ports)) => (cidr, Some(ports)),
    };
    let cidr: Ipv4Cidr = cidr.parse().map_err(|e| format!("{e} ({RULE_SYNTAX})"))?;
    let ports = ports
        .map(str::parse::<PortRange>)
        .transpose()
        .map_err(|e| format!("{e} ({RULE_SYNTAX})"))?;
    Ok(EgressRule {
        cidr,
        protocol,
        ports,
    })
}

/// A rule in the syntax [`parse_rule`] reads (a single address without its `/32`).
pub fn format_rule(r: &EgressRule) -> String {
    let mut s = if r.cidr.prefix_len() == 32 {
        r.cidr.addr().to_string()
    } else {
        r.cidr.to_string()
    };
    if let Some(p) = r.ports {
        s.push_str(&format!(":{p}"));
    }
    if let Some(p) = r.protocol {
        s.push_str(&format!("/{p}"));
    }
    s
}

/// A policy in one line: `default deny; allow 1.1.1.1:443/tcp, 10.0.0.0/8; deny ...; dns`.
pub fn egress_summary(p: &EgressPolicy) -> String {
    let mut parts = vec![format!("default {}", p.default)];
    for (what, list) in [("allow", &p.allow), ("deny", &p.deny)] {
        if !list.is_empty() {
            let rules: Vec<String> = list.iter().map(format_rule).collect();
            parts.push(format!("{what} {}", rules.join(", ")));
        }
    }
    if p.allow_dns {
        parts.push("dns".into());
    }
    parts.join("; ")
}

/// The egress flags of `ember run` and `ember network`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// What the guest may reach when no rule decides: allow or deny (default allow, as in
    /// the API, once any policy flag is given; with none, the daemon's --default-egress).
    #[arg(long, value_name = "allow|deny", value_parser = parse_egress_action)]
    pub egress: Option<EgressAction>,
    /// A destination always allowed: CIDR[:PORTS][/tcp|/udp], e.g. 1.1.1.1:443/tcp (repeat
    /// for more).
    #[arg(long = "allow", value_name = "RULE", value_parser = parse_rule)]
    pub allow: Vec<EgressRule>,
    /// A destination refused unless an --allow rule lets it through (repeat for more).
    #[arg(long = "deny", value_name = "RULE", value_parser = parse_rule)]
    pub deny: Vec<EgressRule>,
    /// DNS (port 53) to any address.
    #[arg(long)]
    pub dns: bool,
}

impl EgressArgs {
    /// The policy these flags make, or `None` when none is given.
    pub fn policy(&self) -> Option<EgressPolicy> {
        if self.egress.is_none() && self.allow.is_empty() && self.deny.is_empty() && !self.dns {
            return None;
        }
        Some(EgressPolicy {
            default: self.egress.unwrap_or_default(),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            allow_dns: self.dns,
        })
    }
}

/// `ember run TEMPLATE`.
pub async fn run(
    client: &Client,
    out: &mut Out<'_>,
    template: &str,
    labels: &[String],
    env: &[String],
    timeout_secs: Option<u64>,
    egress: Option<EgressPolicy>,
) -> Result<(), RemoteError> {
    let template = TemplateName::new(template).map_err(|e| RemoteError::Usage(e.to_string()))?;
    let sb = client
        .create_sandbox(&CreateSandbox {
            template,
            labels: parse_pairs("label", labels)?,
            env: parse_pairs("env", env)?,
            timeout_secs,
            egress,
        })
        .await?;
    if out.json {
        return out.json(&sb);
    }
    writeln!(out.stdout, "{}", sb.id)?;
    Ok(())
}

/// `ember exec ID -- CMD...`: streams the command's output; returns its exit code.
pub async fn exec(
    client: &Client,
    out: &mut Out<'_>,
    id: &str,
    argv: Vec<String>,
    env: &[String],
    stdin: Option<Vec<u8>>,
    timeout_ms: Option<u32>,
) -> Result<i32, RemoteError> {
    if argv.is_empty() {
        return Err(RemoteError::Usage(
            "no command given: ember exec ID -- CMD [ARGS...]".into(),
        ));
    }
    let req = ExecRequest {
        argv,
        env: parse_pairs("env", env)?,
        cwd: None,
        user: None,
        stdin: None,
        stdin_base64: stdin.map(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        }),
        timeout_ms,
    };
    let json = out.json;
    let mut events = Vec::new();
    let mut write_err = None;
    let last = client
        .exec(id, &req, |ev| {
            if json {
                events.push(ev.clone());
                return;
            }
            let r = match ev {
                ExecEvent::Stdout { data, encoding } => ExecEvent::bytes(data, *encoding)
                    .map_err(std::io::Error::other)
                    .and_then(|b| out.stdout.write_all(&b).and_then(|()| out.stdout.flush())),
                ExecEvent::Stderr { data, encoding } => ExecEvent::bytes(data, *encoding)
                    .map_err(std::io::Error::other)
                    .and_then(|b| out.stderr.write_all(&b)),
                _ => Ok(()),
            };
            if let Err(e) = r {
                write_err.get_or_insert(e);
            }
        })
        .await?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if json {
        out.json(&events)?;
    }
    match last {
        ExecEvent::Exit { exit_code, .. } => Ok(if exit_code < 0 {
            128 + exit_code.saturating_neg()
        } else {
            exit_code
        }),
        ExecEvent::Error { code, message } => Err(RemoteError::Usage(format!(
            "the command failed ({code}): {message}"
        ))),
        _ => Err(RemoteError::Usage(
            "the command ended without a status".into(),
        )),
    }
}

/// One side of `ember cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpSide {
    /// A local path, or `-` (stdin/stdout).
    Local(PathBuf),
    /// `ID:PATH` in a sandbox.
    Sandbox {
        /// The sandbox.
        id: String,
        /// The path in it.
        path: String,
    },
}

impl CpSide {
    /// `sb-...:/path` is a sandbox's file; anything else a local one.
    pub fn parse(s: &str) -> CpSide {
        match s.split_once(':') {
            Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
                CpSide::Sandbox {
                    id: id.to_string(),
                    path: path.to_string(),
                }
            }
            _ => CpSide::Local(PathBuf::from(s)),
        }
    }
}

/// `ember cp SRC DST`: one side local, the other `ID:PATH`.
pub async fn cp(
    client: &Client,
    out: &mut Out<'_>,
    src: &str,
    dst: &str,
    mode: Option<u32>,
) -> Result<(), RemoteError> {
    match (CpSide::parse(src), CpSide::parse(dst)) {
        (CpSide::Local(local), CpSide::Sandbox { id, path }) => {
            let data = if local.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&local).map_err(|source| RemoteError::Io {
                    what: "reading",
                    path: local.clone(),
                    source,
                })?
            };
            let n = data.len();
            client.put_file(&id, &path, mode, data).await?;
            if !out.json {
                writeln!(out.stderr, "{n} bytes -> {id}:{path}")?;
            }
            Ok(())
        }
        (CpSide::Sandbox { id, path }, CpSide::Local(local)) => {
            let data = client.get_file(&id, &path).await?;
            if local.as_os_str() == "-" {
                out.stdout.write_all(&data)?;
            } else {
                std::fs::write(&local, &data).map_err(|source| RemoteError::Io {
                    what: "writing",
                    path: local.clone(),
                    source,
                })?;
                if !out.json {
                    writeln!(out.stderr, "{id}:{path} -> {} bytes", data.len())?;
                }
            }
            Ok(())
        }
        _ => Err(RemoteError::Usage(
            "ember cp needs one local path and one SANDBOX:/path (e.g. ember cp ./f sb-1:/f)"
                .into(),
        )),
    }
}

/// What `ember ls` shows.
#[derive(Debug, Clone, Default)]
pub struct LsArgs {
    /// States (default: live ones).
    pub states: Vec<SandboxState>,
    /// Include ended ones.
    pub all: bool,
    /// Only this template's.
    pub template: Option<String>,
    /// Labels `k=v`.
    pub labels: Vec<String>,
    /// At most this many.
    pub limit: usize,
}

/// `ember ls`.
pub async fn ls(client: &Client, out: &mut Out<'_>, args: LsArgs) -> Result<(), RemoteError> {
    if args.limit == 0 {
        return Err(RemoteError::Usage(
            "--limit 0 lists nothing; give at least 1".into(),
        ));
    }
    let mut q: Vec<(&str, String)> = Vec::new();
    let states: Vec<String> = if !args.states.is_empty() {
        args.states.iter().map(|s| s.to_string()).collect()
    } else if args.all {
        Vec::new()
    } else {
        ["creating", "running", "paused"].map(String::from).to_vec()
    };
    if !states.is_empty() {
        q.push(("state", states.join(",")));
    }
    if let Some(t) = &args.template {
        q.push(("template", t.clone()));
    }
    for l in &args.labels {
        q.push(("label", l.clone()));
    }
    let mut items: Vec<Sandbox> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_q = q.clone();
        page_q.push(("limit", args.limit.clamp(1, 1000).to_string()));
        if let Some(c) = &cursor {
            page_q.push(("cursor", c.clone()));
        }
        let qs =
            serde_urlencoded::to_string(&page_q).map_err(|e| RemoteError::Usage(e.to_string()))?;
        let page = client.sandboxes(&qs).await?;
        items.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() || items.len() >= args.limit {
            break;
        }
    }
    items.truncate(args.limit);
    if out.json {
        return out.json(&items);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.template.to_string(),
                s.state.to_string(),
                ago(s.created_at),
                until(s.deadline),
                s.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    write!(
        out.stdout,
        "{}",
        table(
            &["ID", "TEMPLATE", "STATE", "AGE", "TIMEOUT", "LABELS"],
            &rows
        )
    )?;
    Ok(())
}

/// `ember inspect ID` (always JSON: the whole record).
pub async fn inspect(client: &Client, out: &mut Out<'_>, id: &str) -> Result<(), RemoteError> {
    let sb = client.sandbox(id).await?;
    out.json(&sb)
}

/// `ember pause|resume ID`.
pub async fn pause(
    client: &Client,
    out: &mut Out<'_>,
    id: &str,
    pause: bool,
) -> Result<(), RemoteError> {
    let sb = client.pause(id, pause).await?;
    if out.json {
        return out.json(&sb);
    }
    writeln!(out.stdout, "{} {}", sb.id, sb.state)?;
    Ok(())
}

/// `ember rm ID...`.
pub async fn rm(client: &Client, out: &mut Out<'_>, ids: &[String]) -> Result<(), RemoteError> {
    let mut done = Vec::new();
    for id in ids {
        done.push(client.kill(id).await?);
    }
    if out.json {
        return out.json(&done);
    }
    for sb in done {
        writeln!(out.stdout, "{} ended", sb.id)?;
    }
    Ok(())
}

/// `ember timeout ID DURATION`.
pub async fn timeout(
    client: &Client,
    out: &mut Out<'_>,
    id: &str,
    secs: u64,
) -> Result<(), RemoteError> {
    let sb = client.set_timeout(id, secs).await?;
    if out.json {
        return out.json(&sb);
    }
    writeln!(out.stdout, "{} is killed {}", sb.id, until(sb.deadline))?;
    Ok(())
}

fn print_network(out: &mut Out<'_>, sb: &Sandbox) -> Result<(), RemoteError> {
    let Some(net) = &sb.network else {
        return Err(RemoteError::Usage(format!(
            "sandbox {} has no network (emberd gives networks with --sandbox-network, to \
             templates built with --network)",
            sb.id
        )));
    };
    let ports = if net.ports.is_empty() {
        "-".to_string()
    } else {
        net.ports
            .iter()
            .map(|p| format!("{} -> {}", p.guest_port, p.host))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out.stdout, "address  {}", net.address)?;
    writeln!(out.stdout, "egress   {}", egress_summary(&net.egress))?;
    writeln!(out.stdout, "ports    {ports}")?;
    Ok(())
}

/// `ember network ID [POLICY FLAGS]`: replaces the sandbox's egress policy when `policy` is
/// given, then prints its network (address, policy, exposed ports), or the sandbox as JSON.
pub async fn network(
    client: &Client,
    out: &mut Out<'_>,
    id: &str,
    policy: Option<EgressPolicy>,
) -> Result<(), RemoteError> {
    let sb = match policy {
        Some(p) => client.set_network(id, &p).await?,
        None => client.sandbox(id).await?,
    };
    if out.json {
        return out.json(&sb);
    }
    print_network(out, &sb)
}

/// `ember expose ID GUEST_PORT`: exposes a guest TCP port on the host's loopback and prints
/// where (`127.0.0.1:PORT`), or the sandbox as JSON.
pub async fn expose(
    client: &Client,
    out: &mut Out<'_>,
    id: &str,
    guest_port: u16,
) -> Result<(), RemoteError> {
    let sb = client.expose_port(id, guest_port).await?;
    if out.json {
        return out.json(&sb);
    }
    let host = sb
        .network
        .as_ref()
        .and_then(|n| n.ports.iter().find(|p| p.guest_port == guest_port))
        .map(|p| p.host)
        .ok_or_else(|| {
            RemoteError::Client(ClientError::Unexpected(format!(
                "sandbox {id} does not list guest port {guest_port} as exposed"
            )))
        })?;
    writeln!(out.stdout, "{host}")?;
    Ok(())
}

/// `ember info`.
pub async fn info(client: &Client, out: &mut Out<'_>) -> Result<(), RemoteError> {
    let i = client.info().await?;
    if out.json {
        return out.json(&i);
    }
    let c = &i.capacity;
    writeln!(
        out.stdout,
        "emberd {} (KVM {})",
        i.version,
        if i.kvm { "usable" } else { "NOT usable" }
    )?;
    writeln!(out.stdout, "vmm:        {}", i.vmm)?;
    writeln!(out.stdout, "state dir:  {}", i.state_dir)?;
    writeln!(out.stdout, "runtime:    {}", i.runtime_dir)?;
    writeln!(out.stdout, "uptime:     {} s", i.uptime_secs)?;
    writeln!(
        out.stdout,
        "host:       {} CPUs, {} MiB memory ({} MiB available)",
        c.cpus, c.memory_total_mib, c.memory_available_mib
    )?;
    writeln!(
        out.stdout,
        "sandboxes:  {} running, {} paused (at most {}); {} warm VMs; {} VMs in all",
        c.sandboxes_running, c.sandboxes_paused, c.sandboxes_max, c.pooled_vms, c.vms
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pairs_and_cp_sides() {
        assert_eq!(parse_duration_secs("300").unwrap(), 300);
        assert_eq!(parse_duration_secs("5m").unwrap(), 300);
        assert_eq!(parse_duration_secs("2h").unwrap(), 7200);
        assert!(parse_duration_secs("5x").is_err());
        assert!(parse_duration_secs("m").is_err());
        assert_eq!(parse_pairs("env", &["A=b=c".into()]).unwrap()["A"], "b=c");
        assert!(parse_pairs("env", &["A".into()]).is_err());
        assert_eq!(
            CpSide::parse("sb-1:/tmp/x"),
            CpSide::Sandbox {
                id: "sb-1".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(CpSide::parse("./a:b"), CpSide::Local("./a:b".into()));
        assert_eq!(CpSide::parse("/x/y"), CpSide::Local("/x/y".into()));
    }

    #[test]
    fn rules_parse_and_print_back() {
        for (text, cidr, ports, protocol, back) in [
            ("10.0.0.0/8", "10.0.0.0/8", None, None, "10.0.0.0/8"),
            ("1.1.1.1", "1.1.1.1/32", None, None, "1.1.1.1"),
            ("1.1.1.1/32", "1.1.1.1/32", None, None, "1.1.1.1"),
            (
                "1.1.1.1:443",
                "1.1.1.1/32",
                Some((443, 443)),
                None,
                "1.1.1.1:443",
            ),
            (
                "10.1.2.3:8000-8080/tcp",
                "10.1.2.3/32",
                Some((8000, 8080)),
                Some(Protocol::Tcp),
                "10.1.2.3:8000-8080/tcp",
            ),
            (
                "10.0.0.0/8:53/udp",
                "10.0.0.0/8",
                Some((53, 53)),
                Some(Protocol::Udp),
                "10.0.0.0/8:53/udp",
            ),
            (
                "10.0.0.0/8/tcp",
                "10.0.0.0/8",
                None,
                Some(Protocol::Tcp),
                "10.0.0.0/8/tcp",
            ),
            (
                "1.1.1.1/UDP",
                "1.1.1.1/32",
                None,
                Some(Protocol::Udp),
                "1.1.1.1/udp",
            ),
            ("0.0.0.0/0", "0.0.0.0/0", None, None, "0.0.0.0/0"),
        ] {
            let r = parse_rule(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.cidr.to_string(), cidr, "{text}");
            assert_eq!(r.ports.map(|p| (p.first(), p.last())), ports, "{text}");
            assert_eq!(r.protocol, protocol, "{text}");
            assert_eq!(format_rule(&r), back, "{text}");
            assert_eq!(parse_rule(back).unwrap(), r, "{back}");
        }
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty rule"),
            ("   ", "empty rule"),
            ("nope", "not an IPv4 address"),
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "longer than /32"),
            ("1.1.1.1/icmp", "\"icmp\" is not a protocol: tcp or udp"),
            ("1.1.1.1:443/sctp", "\"sctp\" is not a protocol"),
            ("1.1.1.1:", "no ports after ':'"),
            ("1.1.1.1:/tcp", "no ports after ':'"),
            ("1.1.1.1:0", "port 0"),
            ("1.1.1.1:70000", "not a port"),
            ("1.1.1.1:https", "not a port"),
            ("1.1.1.1:90-80", "lower port first"),
            ("1.1.1.1:80:81", "not a port"),
            ("1.1.1.1/tcp/udp", "not an IPv4 address"),
            ("/tcp", "not an IPv4 address"),
        ] {
            let e = parse_rule(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(e.contains("CIDR[:PORTS][/tcp|/udp]"), "{text:?}: {e}");
        }
    }

    #[test]
    fn egress_flags_make_a_policy_only_when_given() {
        assert_eq!(EgressArgs::default().policy(), None);
        assert_eq!(parse_egress_action("deny"), Ok(EgressAction::Deny));
        let e = parse_egress_action("maybe").unwrap_err();
        assert!(e.contains("\"maybe\" is neither allow nor deny"), "{e}");
        let dns_only = EgressArgs {
            dns: true,
            ..EgressArgs::default()
        };
        assert_eq!(
            dns_only.policy(),
            Some(EgressPolicy {
                allow_dns: true,
                ..EgressPolicy::allow_all()
            })
        );
        let p = EgressArgs {
            egress: Some(EgressAction::Deny),
            allow: vec![parse_rule("1.1.1.1:443/tcp").unwrap()],
            deny: vec![parse_rule("10.0.0.0/8").unwrap()],
            dns: true,
        }
        .policy()
        .unwrap();
        assert_eq!(p.default, EgressAction::Deny);
        assert_eq!(
            egress_summary(&p),
            "default deny; allow 1.1.1.1:443/tcp; deny 10.0.0.0/8; dns"
        );
        assert_eq!(egress_summary(&EgressPolicy::allow_all()), "default allow");
    }
}
