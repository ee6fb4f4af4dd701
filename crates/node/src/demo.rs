//! `steadfast demo`: the main job for a new user. A 3-node lab with the builtin backend, a
//! verifying load (a new connection every 10 ms plus keep-alive connections), a host crash of
//! the primary, a heal, and a short report; the lab is always torn down unless `--keep`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use steadfast_lab::load::{
    self, KeepAliveOptions, LoadOptions, LoadProgress, LoadReport, ProbeOptions,
};
use steadfast_lab::{BackendKind, CrashKind, UpOptions};

use crate::lab_cli::DemoArgs;

/// Tears the demo lab down however the demo ends.
struct Teardown {
    name: String,
    keep: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.keep {
            println!("\nkept the lab: `steadfast lab status {0}`, remove it with `steadfast lab down {0}`", self.name);
        } else if let Err(e) = steadfast_lab::down(&self.name) {
            eprintln!("steadfast demo: removing lab {}: {e}", self.name);
        }
    }
}

fn phase(started: Instant, what: &str) {
    println!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Sleeps `span` while printing one progress line per second.
fn watch(started: Instant, progress: &LoadProgress, span: Duration, stop: &AtomicBool) {
    let until = Instant::now() + span;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        );
        let s = progress.snapshot();
        println!(
            "[{:>5.1}s]   new connections ok {:>5} failed {:>3} | keep-alive requests ok {:>5} failed {:>3} | served by {}",
            started.elapsed().as_secs_f64(),
            s.probes_ok,
            s.probes_failed,
            s.requests_ok,
            s.requests_failed,
            s.last_server.as_deref().unwrap_or("-")
        );
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let started = Instant::now();
    let name = format!("demo-{}", std::process::id());
    let exe = std::env::current_exe().context("finding the steadfast executable")?;
    let mut opts = UpOptions::new(name.clone(), args.nodes, exe);
    opts.heartbeat_ms = args.heartbeat_ms;
    opts.backend = BackendKind::Builtin;
    println!("Steadfast demo: {} nodes in network namespaces, the builtin HTTP backend, unreplicated mode.", args.nodes);
    phase(
        started,
        &format!("building lab {name} (namespaces {name}-client, {name}-n1 …)"),
    );
    let _teardown = Teardown {
        name: name.clone(),
        keep: args.keep,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Ctrl-C ends the demo early; the teardown still runs.
        let _ = ctrlc_flag(flag);
    }
    let info = steadfast_lab::up(&opts)?;
    let primary = info.primary.clone().unwrap_or_else(|| "?".into());
    phase(
        started,
        &format!(
            "VIP {}:{} answers, served by {primary}",
            info.vip, info.port
        ),
    );

    let progress = Arc::new(LoadProgress::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = LoadOptions {
        target: std::net::SocketAddr::new(info.vip.into(), info.port),
        duration: Duration::from_secs(60),
        probes: Some(ProbeOptions {
            period: Duration::from_millis(10),
            timeout: Duration::from_millis(500),
            ..ProbeOptions::default()
        }),
        keep_alive: Some(KeepAliveOptions {
            connections: 4,
            sizes: vec![1024, 10 * 1024, 50 * 1024],
            ..KeepAliveOptions::default()
        }),
    };
    let client_ns = info.client_ns.clone();
    let load_progress = progress.clone();
    let load_thread = std::thread::spawn(move || -> anyhow::Result<LoadReport> {
        steadfast_lab::run_in_namespace(&client_ns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the load's runtime")?;
            runtime
                .block_on(load::run_load(
                    options,
                    async move {
                        let _ = stop_rx.await;
                    },
                    load_progress,
                ))
                .context("running the load")
        })?
    });
    phase(
        started,
        "load running: a new connection every 10 ms, 4 keep-alive connections, every body verified",
    );
    watch(started, &progress, Duration::from_secs(3), &interrupted);

    let mut crash_at = None;
    if !interrupted.load(Ordering::Relaxed) {
        let crash = steadfast_lab::crash(&name, "primary", CrashKind::Host)?;
        crash_at = Some(Instant::now());
        phase(
            started,
            &format!(
                "CRASH: host {} killed (every process, link cut)",
                crash.host
            ),
        );
        watch(started, &progress, Duration::from_secs(3), &interrupted);
        if !interrupted.load(Ordering::Relaxed) {
            steadfast_lab::heal(&name, &crash.host)?;
            phase(
                started,
                &format!(
                    "HEAL: {} restarted; it rejoins as a backup (no preemption)",
                    crash.host
                ),
            );
            watch(started, &progress, Duration::from_secs(3), &interrupted);
        }
    }
    let _ = stop_tx.send(());
    let report = load_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let crash_offset = crash_at.map(|t| t.saturating_duration_since(started));
    print_report(&report, crash_offset.is_some(), &mut std::io::stdout())?;
    let status = steadfast_lab::status(&name)?;
    println!("\nFinal state of the lab:\n{status}");
    Ok(std::process::ExitCode::SUCCESS)
}

fn ctrlc_flag(flag: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    // A watcher thread turns SIGINT into a flag; the demo then stops at its next step.
    signals.thread_block().context("blocking SIGINT")?;
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    Ok(())
}

fn print_report(report: &LoadReport, crashed: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let s = report.summary();
    writeln!(out, "\nReport")?;
    writeln!(
        out,
        "  new connections: {} probes, {} failed",
        s.probes, s.probe_failures
    )?;
    for o in &s.outages {
        writeln!(
            out,
            "    outage at {:.2}s: new connections failed for {} ms ({} probes)",
            o.from.as_secs_f64(),
            o.duration.as_millis(),
            o.failed_probes
        )?;
    }
    writeln!(
        out,
        "  longest client-visible gap for new connections: {} ms",
        s.longest_gap.as_millis()
    )?;
    writeln!(
        out,
        "  keep-alive requests: {} sent, {} failed, {} reconnects",
        s.requests, s.request_failures, s.reconnects
    )?;
    if crashed && s.request_failures > 0 {
        writeln!(
            out,
            "    (expected in unreplicated mode: the crashed host's established connections are\n     reset, as with keepalived; duplex mode, under construction, keeps them)"
        )?;
    }
    writeln!(out, "  who served when:")?;
    for span in &s.served_by {
        writeln!(
            out,
            "    {:>6.2}s – {:>6.2}s  {} ({} probes)",
            span.from.as_secs_f64(),
            span.to.as_secs_f64(),
            span.server.as_deref().unwrap_or("unknown"),
            span.probes
        )?;
    }
    Ok(())
}
