//! `ember-jailer`: starts a VMM in its jail (see the library's docs) and writes its host pid.
//!
//! ```text
//! ember-jailer --id ID --root DIR --uid N --gid N --exec-file PATH [--bind SRC[:DST][:ro|rw]]...
//!              [--netns PATH] [--cpu-weight W] [--cpu-quota QUOTA_US/PERIOD_US]
//!              [--memory-max BYTES] [--pids-max N] [--parent-cgroup NAME] [--pid-file PATH]
//!              [--parent-pid OWNER] [--no-library-scan] -- VMM ARGS...
//! ember-jailer --cleanup --id ID [--parent-cgroup NAME]
//! ember-jailer --serve --parent-pid OWNER
//! ```
//! Exits 0 once the VMM is running (exec'd) in its jail, 2 with a message naming what was
//! wrong otherwise; with `--parent-pid` it stays as the VMM's parent and ends as the VMM ends. `--cleanup` removes a gone VMM's cgroup.
//! `--serve` stays resident and starts VMMs on requests from stdin (see `ember_jailer::serve`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_jailer::cgroup::{self, DEFAULT_ROOT};
use ember_jailer::{Bind, JailConfig, Limits};

/// Starts a VMM in new namespaces, a private root, its own uid/gid and a cgroup.
#[derive(Debug, Parser)]
#[command(name = "ember-jailer", version, about)]
struct Args {
    /// The VM's id (names its cgroup and hostname): 1-64 of A-Z a-z 0-9 _ -.
    #[arg(long, required_unless_present = "serve", default_value = "")]
    id: String,
    /// The directory that becomes the VMM's root (must exist; chowned to uid:gid).
    #[arg(long, required_unless_present_any = ["cleanup", "serve"])]
    root: Option<PathBuf>,
    /// The VMM's uid (not 0).
    #[arg(long, required_unless_present_any = ["cleanup", "serve"])]
    uid: Option<u32>,
    /// The VMM's gid (not 0).
    #[arg(long, required_unless_present_any = ["cleanup", "serve"])]
    gid: Option<u32>,
    /// The VMM binary (appears as /<its name> in the jail).
    #[arg(long, required_unless_present_any = ["cleanup", "serve"])]
    exec_file: Option<PathBuf>,
    /// A host file or directory the VMM may see: SOURCE[:TARGET][:ro|:rw] (read-only by default).
    #[arg(long = "bind", value_parser = parse_bind)]
    binds: Vec<Bind>,
    /// Join this network namespace instead of a new, empty one.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// CPU weight 1..=10000 (100 is the default share).
    #[arg(long)]
    cpu_weight: Option<u64>,
    /// CPU quota as QUOTA_US/PERIOD_US (50000/100000 is half a CPU).
    #[arg(long, value_parser = parse_quota)]
    cpu_quota: Option<(u64, u64)>,
    /// Memory limit in bytes (the VMM and its guest's memory).
    #[arg(long)]
    memory_max: Option<u64>,
    /// Most tasks (threads) in the VM's cgroup.
    #[arg(long)]
    pids_max: Option<u64>,
    /// The cgroup under which each VM gets `<id>`.
    #[arg(long, default_value = "ember")]
    parent_cgroup: String,
    /// Where cgroup trees are mounted.
    #[arg(long, default_value = DEFAULT_ROOT, hide = true)]
    cgroup_root: PathBuf,
    /// Write the VMM's host pid here (and on stdout when not given).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Tie the VMM to this owner pid (the jailer's parent): the jailer stays as the VMM's
    /// parent and dies with the owner, taking the VMM with it; it ends as the VMM ends.
    #[arg(long)]
    parent_pid: Option<u32>,
    /// Do not list the VMM's shared libraries with ldd (the caller binds them with --bind).
    #[arg(long)]
    no_library_scan: bool,
    /// Remove the cgroup of VM `--id` (its VMM must be gone) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Stay resident: start VMMs on JSON requests read from stdin, one a line, answering each
    /// on stdout; the VMMs become children of `--parent-pid` (required), this jailer's parent.
    #[arg(long, requires = "parent_pid")]
    serve: bool,
    /// The VMM's arguments (after `--`).
    #[arg(last = true)]
    vmm_args: Vec<String>,
}

fn parse_bind(s: &str) -> Result<Bind, String> {
    Bind::parse(s).map_err(|e| e.to_string())
}

fn parse_quota(s: &str) -> Result<(u64, u64), String> {
    let (q, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected QUOTA_US/PERIOD_US"))?;
    let n = |x: &str| x.parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(q)?, n(p)?))
}

fn run(args: Args) -> Result<()> {
    if args.serve {
        let owner = args.parent_pid.context("--serve needs --parent-pid")?;
        return ember_jailer::serve::serve(owner).context("serving");
    }
    if args.cleanup {
        let version = cgroup::detect(&args.cgroup_root)?;
        cgroup::remove(&args.cgroup_root, version, &args.parent_cgroup, &args.id)
            .with_context(|| format!("removing the cgroup of {}", args.id))?;
        return Ok(());
    }
    let (Some(root), Some(uid), Some(gid), Some(exec_file)) =
        (args.root, args.uid, args.gid, args.exec_file)
    else {
        bail!("--root, --uid, --gid and --exec-file are required");
    };
    let config = JailConfig {
        id: args.id,
        root,
        exec_file,
        uid,
        gid,
        binds: args.binds,
        netns: args.netns,
        limits: Limits {
            cpu_weight: args.cpu_weight,
            cpu_quota: args.cpu_quota,
            memory_max: args.memory_max,
            pids_max: args.pids_max,
        },
        parent_cgroup: args.parent_cgroup,
        args: args.vmm_args,
        tie_to: args.parent_pid,
        scan_libraries: !args.no_library_scan,
    };
    let started = ember_jailer::start(&config, Path::new(&args.cgroup_root))
        .with_context(|| format!("jailing {}", config.id))?;
    match &args.pid_file {
        Some(path) => std::fs::write(path, format!("{}\n", started.pid))
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", started.pid);
            }
        }
    }
    if config.tie_to.is_some() {
        ember_jailer::jail::wait_and_mirror(started.pid);
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    if let Err(e) = run(Args::parse()) {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("ember-jailer: {e:#}");
        }
        std::process::exit(2);
    }
}
