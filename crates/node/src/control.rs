//! The daemon's unix control socket: one line in (`status`), one JSON document out.

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
    match line.trim() {
        "status" => {
            let (reply_tx, reply_rx) = oneshot::channel();
            tx.send(ControlRequest::Status(reply_tx)).await?;
            let status = reply_rx.await?;
            let mut json = serde_json::to_vec(&status)?;
            json.push(b'\n');
            write.write_all(&json).await?;
        }
        other => {
            write
                .write_all(
                    format!("{{\"error\":\"unknown request {other:?}; try status\"}}\n").as_bytes(),
                )
                .await?;
        }
    }
    write.shutdown().await?;
    Ok(())
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
}
