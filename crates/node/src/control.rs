//! The daemon's unix control socket: one line in, one JSON document out. The lines: `status`;
//! `move NODE` (a planned switchover to member NODE); `standby on`, `standby off`. A command
//! that fails answers `{"error": "…"}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::status::NodeStatus;

/// A request from a control client to the election loop.
pub enum ControlRequest {
    Status(oneshot::Sender<NodeStatus>),
    /// `steadfast move --to NODE`.
    Move {
        to: steadfast_core::NodeId,
        reply: oneshot::Sender<CommandAnswer>,
    },
    /// `steadfast standby on|off`.
    Standby {
        on: bool,
        reply: oneshot::Sender<CommandAnswer>,
    },
}

/// What a command reports (a JSON object), or why it was refused.
pub type CommandAnswer = Result<serde_json::Value, String>;

/// How long a client waits for a command's answer: a move waits for the new primary
/// (`daemon::MOVE_WAIT`) after the hand-over (`daemon::HAND_OVER_WAIT`).
pub const COMMAND_WAIT: Duration = Duration::from_secs(10);

/// A command line of the control socket.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Status,
    Move(steadfast_core::NodeId),
    Standby(bool),
}

fn parse_line(line: &str) -> Result<Line, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Line::Status),
        ["move", id] => id
            .parse()
            .map(Line::Move)
            .map_err(|_| format!("move: {id:?} is not a node id (1-65535)")),
        ["standby", "on"] => Ok(Line::Standby(true)),
        ["standby", "off"] => Ok(Line::Standby(false)),
        ["standby", other] => Err(format!("standby: {other:?} is neither on nor off")),
        _ => Err(format!(
            "unknown request {line:?}; try status, move NODE, standby on|off"
        )),
    }
}

/// Binds the socket (replacing a stale one) and serves clients until the process ends.
pub fn serve(path: &Path, tx: mpsc::Sender<ControlRequest>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the control socket's folder {}", dir.display()))?;
    }
    if path.exists() {
        // A socket a live daemon answers on is another group's (or this group's, started
        // twice): taking it over would leave that daemon without control and status.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "the control socket {} is in use by another running daemon: give each group \
                 on this host its own [control] socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = answer(stream, tx).await;
            });
        }
    });
    Ok(())
}

async fn answer(stream: UnixStream, tx: mpsc::Sender<ControlRequest>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(2),
        BufReader::new(read).read_line(&mut line),
    )
    .await??;
    let answer = match parse_line(line.trim()) {
        Ok(Line::Status) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            tx.send(ControlRequest::Status(reply_tx)).await?;
            serde_json::to_value(reply_rx.await?)?
        }
        Ok(Line::Move(to)) => {
            let (reply, reply_rx) = oneshot::channel();
            tx.send(ControlRequest::Move { to, reply }).await?;
            refused_as_error(reply_rx.await?)
        }
        Ok(Line::Standby(on)) => {
            let (reply, reply_rx) = oneshot::channel();
            tx.send(ControlRequest::Standby { on, reply }).await?;
            refused_as_error(reply_rx.await?)
        }
        Err(e) => serde_json::json!({ "error": e }),
    };
    let mut json = serde_json::to_vec(&answer)?;
    json.push(b'\n');
    write.write_all(&json).await?;
    write.shutdown().await?;
    Ok(())
}

fn refused_as_error(answer: CommandAnswer) -> serde_json::Value {
    answer.unwrap_or_else(|e| serde_json::json!({ "error": e }))
}

/// Sends a daemon one command line (`move 2`, `standby on`) and returns its answer; a refusal
/// is an error carrying the daemon's reason (blocking; for the command line and the tests).
pub fn command(path: &Path, line: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to the control socket {}", path.display()))?;
    stream.set_read_timeout(Some(COMMAND_WAIT))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading the answer to {line:?} from {}", path.display()))?;
    let answer: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "the daemon at {} answered {line:?} with malformed JSON: {text:?}",
            path.display()
        )
    })?;
    if let Some(error) = answer.get("error") {
        bail!(
            "{}",
            error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string)
        );
    }
    Ok(answer)
}

/// Asks a daemon for its status (blocking; for the command line and the lab).
pub fn query_status(path: &PathBuf) -> anyhow::Result<NodeStatus> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to the control socket {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"status\n")?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading status from {}", path.display()))?;
    if text.trim().is_empty() {
        bail!("the daemon at {} answered nothing", path.display());
    }
    serde_json::from_str(&text).with_context(|| {
        format!(
            "the daemon at {} answered malformed status: {text}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_socket_in_use_is_refused_and_a_stale_one_replaced() {
        let dir = std::env::temp_dir().join(format!("steadfast-control-{}", std::process::id()));
        let path = dir.join("web.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // A stale socket (its daemon died): replaced.
            drop(std::os::unix::net::UnixListener::bind(&{
                std::fs::create_dir_all(&dir).expect("folder");
                path.clone()
            }));
            assert!(path.exists(), "the stale socket file stays behind");
            let (tx, _rx) = mpsc::channel(1);
            serve(&path, tx).expect("a stale socket is replaced");
            // A live one (another group's daemon, say): refused, naming the socket.
            let (tx, _rx) = mpsc::channel(1);
            let refused = serve(&path, tx).expect_err("a socket in use is refused");
            let text = format!("{refused:#}");
            assert!(
                text.contains("in use by another running daemon") && text.contains("web.sock"),
                "{text}"
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn command_lines_are_parsed_and_bad_ones_named() {
        assert_eq!(parse_line("status"), Ok(Line::Status));
        assert_eq!(parse_line("move 2"), Ok(Line::Move(2)));
        assert_eq!(parse_line("  standby   on "), Ok(Line::Standby(true)));
        assert_eq!(parse_line("standby off"), Ok(Line::Standby(false)));
        let bad = parse_line("move two").unwrap_err();
        assert!(bad.contains("\"two\" is not a node id"), "{bad}");
        let bad = parse_line("move 70000").unwrap_err();
        assert!(bad.contains("70000"), "{bad}");
        let bad = parse_line("standby maybe").unwrap_err();
        assert!(bad.contains("neither on nor off"), "{bad}");
        let bad = parse_line("drop tables").unwrap_err();
        assert!(
            bad.contains("unknown request") && bad.contains("move NODE"),
            "{bad}"
        );
    }
}
