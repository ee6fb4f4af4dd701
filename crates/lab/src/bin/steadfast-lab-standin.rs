//! Stands in for the `steadfast` executable in the lab's own tests, which cannot build the
//! binary of another crate:
//!
//! - `backend --listen ADDR --node-name NAME --data-tier FILE` is the real builtin backend, as
//!   `steadfast-lab backend` runs it;
//! - `run --config FILE` and `witness --config FILE` are NOT the daemon: they do only what the
//!   lab itself relies on, so the lab's process handling can be tested before the daemon exists.
//!   On start a member removes its service VIP (as the daemon does); member 1 then adds it (so
//!   `lab up` sees a primary); each answers `status` on its control socket with
//!   `{"node_id":N,"role":"primary|backup|witness","stand_in":true}`. No heartbeats, no
//!   election, no failover.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use steadfast_lab::backend::{serve, BackendConfig};

const USAGE: &str = "usage: steadfast-lab-standin backend --listen ADDR --node-name NAME \
                     --data-tier FILE | run --config FILE | witness --config FILE";

/// `--flag value` pairs, all required, none other accepted.
fn flags<'a>(rest: &'a [String], names: &[&str]) -> Result<Vec<&'a str>, String> {
    let mut values = vec![None; names.len()];
    let mut words = rest.iter();
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let slot = names
            .iter()
            .position(|n| n == flag)
            .ok_or_else(|| format!("unknown option {flag:?}\n{USAGE}"))?;
        values[slot] = Some(value.as_str());
    }
    values
        .into_iter()
        .zip(names)
        .map(|(v, n)| v.ok_or_else(|| format!("{n} is required\n{USAGE}")))
        .collect()
}

fn run_backend(rest: &[String]) -> Result<(), String> {
    let values = flags(rest, &["--listen", "--node-name", "--data-tier"])?;
    let config = BackendConfig {
        listen: values[0]
            .parse()
            .map_err(|e| format!("--listen {:?}: {e}", values[0]))?,
        node_name: values[1].to_string(),
        data_tier: values[2].into(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("building the runtime: {e}"))?;
    runtime.block_on(serve(config)).map_err(|e| e.to_string())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_stand_in_daemon(rest: &[String], member: bool) -> Result<(), String> {
    let config_path = PathBuf::from(flags(rest, &["--config"])?[0]);
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?;
    let config: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let node_id = config
        .get("node_id")
        .and_then(|v| v.as_integer())
        .ok_or_else(|| format!("{}: node_id missing", config_path.display()))?;
    let socket = config
        .get("control")
        .and_then(|c| c.get("socket"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| format!("{}: control.socket missing", config_path.display()))?;
    let folder = config_path.parent().unwrap_or(Path::new("."));
    let socket = folder.join(socket);
    let mut role = if member { "backup" } else { "witness" };
    if member {
        let service = config
            .get("service")
            .and_then(|s| s.get(0))
            .ok_or_else(|| format!("{}: service missing", config_path.display()))?;
        let vip = service.get("vip").and_then(|v| v.as_str()).unwrap_or("");
        let interface = service
            .get("interface")
            .and_then(|v| v.as_str())
            .unwrap_or("eth0");
        let with_prefix = format!("{vip}/24");
        // Absent most of the time: the removal failing is the normal case.
        let _ = ip(&["addr", "del", &with_prefix, "dev", interface]);
        if node_id == 1 {
            ip(&["addr", "add", &with_prefix, "dev", interface])?;
            role = "primary";
        }
    }
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let reply = format!("{{\"node_id\":{node_id},\"role\":\"{role}\",\"stand_in\":true}}");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_ok() && line.trim() == "status" {
            let _ = stream.write_all(reply.as_bytes());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((verb, rest)) if verb == "backend" => run_backend(rest),
        Some((verb, rest)) if verb == "run" => run_stand_in_daemon(rest, true),
        Some((verb, rest)) if verb == "witness" => run_stand_in_daemon(rest, false),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("steadfast-lab-standin: {message}");
            ExitCode::FAILURE
        }
    }
}
