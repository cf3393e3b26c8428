//! `ember-agent-call`: runs one command through an agent reached over Firecracker's hybrid
//! vsock Unix socket (the host side of a VM's vsock device) and prints its output; exits with
//! the command's exit status (128 + N for a signal). A debugging tool, and how the nested
//! Linux rig talks to ember-agent in its L2 guest.
//!
//! ```text
//! ember-agent-call --uds /run/vsock.sock [--port 52] [--wait-ms 60000] [--timeout-ms 30000]
//!                  [--reseed GENERATION] [--put LOCAL:GUEST] [--get GUEST:LOCAL] [-- ARGV...]
//! ```
//! In order: Reseed, the upload, the command, the download.
//! ```text
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_agent_proto::{AgentClient, Exec};

/// Runs one command through an ember agent over a hybrid vsock socket.
#[derive(Debug, Parser)]
#[command(name = "ember-agent-call", version, about)]
struct Args {
    /// The VM's vsock Unix socket (its `uds_path`).
    #[arg(long)]
    uds: PathBuf,
    /// The agent's vsock port.
    #[arg(long, default_value_t = 52)]
    port: u32,
    /// How long to keep trying to reach the agent (it may still be starting), ms.
    #[arg(long, default_value_t = 60_000)]
    wait_ms: u64,
    /// The command's time limit in the guest, ms (0: none).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u32,
    /// First send Reseed with this generation: fresh host entropy and the host's wall clock
    /// (what a handover does to a restored clone).
    #[arg(long)]
    reseed: Option<u64>,
    /// Copy a host file into the guest first (mode 0644): LOCAL:GUEST.
    #[arg(long, value_parser = parse_pair::<PathBuf, String>)]
    put: Option<(PathBuf, String)>,
    /// Copy a guest file to the host after the command: GUEST:LOCAL.
    #[arg(long, value_parser = parse_pair::<String, PathBuf>)]
    get: Option<(String, PathBuf)>,
    /// The command and its arguments (none: only the copies).
    #[arg(last = true)]
    argv: Vec<String>,
}

/// Splits `A:B` at its first colon.
fn parse_pair<A: From<String>, B: From<String>>(s: &str) -> Result<(A, B), String> {
    match s.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => {
            Ok((A::from(a.to_string()), B::from(b.to_string())))
        }
        _ => Err(format!("{s:?}: expected FROM:TO")),
    }
}

/// Largest file `--get` fetches.
const MAX_GET: usize = 1 << 30;

fn run(args: Args) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let mut client = loop {
        match AgentClient::connect(&args.uds, args.port, Duration::from_secs(5)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "agent not reachable yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reaching the agent at {} port {}",
                        args.uds.display(),
                        args.port
                    )
                });
            }
        }
    };
    if let Some(generation) = args.reseed {
        client.reseed_fresh(generation).context("reseeding")?;
    }
    if let Some((local, guest)) = &args.put {
        let data = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
        client
            .put_file(guest, 0o644, &data)
            .with_context(|| format!("writing {guest} in the guest"))?;
    }
    if args.argv.is_empty() {
        get(&mut client, args.get.as_ref())?;
        return Ok(0);
    }
    let argv: Vec<&str> = args.argv.iter().map(String::as_str).collect();
    let mut exec = Exec::new(&argv);
    exec.timeout_ms = args.timeout_ms;
    let out = client.exec(&exec).context("running the command")?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    if out.stdout_truncated || out.stderr_truncated {
        bail!("the agent cut the output to fit its reply");
    }
    get(&mut client, args.get.as_ref())?;
    Ok(match out.exit_code {
        c if c < 0 => 128 - c,
        c => c,
    })
}

/// `--get`: the guest file to a host file.
fn get(client: &mut AgentClient, get: Option<&(String, PathBuf)>) -> Result<()> {
    let Some((guest, local)) = get else {
        return Ok(());
    };
    let contents = client
        .get_file(guest, MAX_GET)
        .with_context(|| format!("reading {guest} in the guest"))?;
    std::fs::write(local, &contents.data).with_context(|| format!("writing {}", local.display()))
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let code = match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("ember-agent-call: {e:#}");
            }
            125
        }
    };
    std::process::exit(code);
}
