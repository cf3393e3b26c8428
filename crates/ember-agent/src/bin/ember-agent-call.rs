//! `ember-agent-call`: runs one command through an agent reached over Firecracker's hybrid
//! vsock Unix socket (the host side of a VM's vsock device) and prints its output; exits with
//! the command's exit status (128 + N for a signal). A debugging tool, and how the nested
//! Linux rig talks to ember-agent in its L2 guest.
//!
//! ```text
//! ember-agent-call --uds /run/vsock.sock [--port 52] [--wait-ms 60000] [--timeout-ms 30000]
//!                  [--reseed GENERATION] -- ARGV...
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
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

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
    let argv: Vec<&str> = args.argv.iter().map(String::as_str).collect();
    let mut exec = Exec::new(&argv);
    exec.timeout_ms = args.timeout_ms;
    let out = client.exec(&exec).context("running the command")?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    if out.stdout_truncated || out.stderr_truncated {
        bail!("the agent cut the output to fit its reply");
    }
    Ok(match out.exit_code {
        c if c < 0 => 128 - c,
        c => c,
    })
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
