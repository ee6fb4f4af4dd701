//! One end of the active link over TCP: the handshake (both ends prove the group's link key
//! over both nonces, then every frame is sealed), a task that seals and writes the frames
//! handed to it, and a task that reads, opens and hands on the frames received.

use std::net::SocketAddr;

use steadfast_core::active_wire::{
    encode, encode_sealed, link_key, ActiveFrame, ActiveFrameReader, ActiveWireError,
};
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::replication_seal::{channel, LinkEnd, Protection, Sealer};
use steadfast_core::replication_wire::{handshake_proof, verify_proof, LinkAttempt, NONCE_LEN};
use steadfast_core::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a handshake may take before the link is given up (both ends are on one LAN).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("active link with {peer}: {what}: {source}")]
    Io {
        peer: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("active link with {peer}: {source}")]
    Wire {
        peer: SocketAddr,
        #[source]
        source: ActiveWireError,
    },
    #[error("active link with {peer}: the handshake did not finish within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout { peer: SocketAddr },
    #[error("active link with {peer}: expected a {expected} frame in the handshake, got {got}")]
    Unexpected {
        peer: SocketAddr,
        expected: &'static str,
        got: &'static str,
    },
    #[error(
        "active link with {peer}: node {node} is not a member of the group (or not at that \
         address)"
    )]
    NotAMember { peer: SocketAddr, node: NodeId },
    #[error(
        "active link with {peer}: it protects frames as {theirs}, this node as {ours}; \
         `replication_encryption` must be the same on every member"
    )]
    ProtectionMismatch {
        peer: SocketAddr,
        theirs: &'static str,
        ours: &'static str,
    },
    #[error(
        "active link with {peer}: node {node}'s proof of the group key is wrong (another key, \
         or a forged or replayed handshake)"
    )]
    BadProof { peer: SocketAddr, node: NodeId },
    #[error("active link with {peer}: closed by the peer")]
    Closed { peer: SocketAddr },
}

/// What each end knows before the handshake.
#[derive(Debug, Clone)]
pub struct LinkIdentity {
    pub node: NodeId,
    /// The group key (the link runs under a key derived from it).
    pub group_key: AuthKey,
    pub protection: Protection,
    /// The primary's attempt number; a replica sends [`LinkAttempt::NONE`].
    pub attempt: LinkAttempt,
}

/// A link whose handshake is done.
pub struct OpenLink {
    pub peer_node: NodeId,
    /// The peer's attempt (a primary's process incarnation and attempt number).
    pub peer_attempt: LinkAttempt,
    pub peer: SocketAddr,
    pub sealer: Sealer,
    pub reader: ActiveFrameReader,
    pub read_half: OwnedReadHalf,
    pub write_half: OwnedWriteHalf,
}

/// Runs the handshake on `stream`; `is_member` says whether a node id at the stream's address
/// may link at all.
pub async fn handshake(
    stream: TcpStream,
    identity: &LinkIdentity,
    is_member: impl Fn(NodeId, SocketAddr) -> bool,
) -> Result<OpenLink, LinkError> {
    let peer = stream.peer_addr().map_err(|source| LinkError::Io {
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        what: "reading the peer's address",
        source,
    })?;
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake_within(stream, identity, peer, is_member),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(LinkError::HandshakeTimeout { peer }),
    }
}

async fn handshake_within(
    stream: TcpStream,
    identity: &LinkIdentity,
    peer: SocketAddr,
    is_member: impl Fn(NodeId, SocketAddr) -> bool,
) -> Result<OpenLink, LinkError> {
    let _ = stream.set_nodelay(true);
    let (mut read_half, mut write_half) = stream.into_split();
    let key = link_key(&identity.group_key);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| LinkError::Io {
        peer,
        what: "drawing the handshake's nonce",
        source: std::io::Error::other(e.to_string()),
    })?;
    let wire = |source| LinkError::Wire { peer, source };
    let mut out = Vec::new();
    encode(
        &ActiveFrame::Hello {
            node: identity.node,
            nonce,
            attempt: identity.attempt,
            protection: identity.protection,
        },
        0,
        &mut out,
    )
    .map_err(wire)?;
    write_all(&mut write_half, &out, peer, "sending the hello").await?;
    let mut reader = ActiveFrameReader::new();
    let mut buf = [0u8; 512];
    let (peer_node, peer_nonce, peer_attempt) =
        match next_frame(&mut reader, &mut read_half, peer, &mut buf).await? {
            ActiveFrame::Hello {
                node,
                nonce,
                attempt,
                protection,
            } => {
                if protection != identity.protection {
                    return Err(LinkError::ProtectionMismatch {
                        peer,
                        theirs: protection.label(),
                        ours: identity.protection.label(),
                    });
                }
                if !is_member(node, peer) {
                    return Err(LinkError::NotAMember { peer, node });
                }
                (node, nonce, attempt)
            }
            other => {
                return Err(LinkError::Unexpected {
                    peer,
                    expected: "hello",
                    got: other.label(),
                })
            }
        };
    let mac = handshake_proof(&key, identity.node, identity.attempt, &nonce, &peer_nonce);
    out.clear();
    encode(&ActiveFrame::Proof { mac }, 0, &mut out).map_err(wire)?;
    write_all(&mut write_half, &out, peer, "sending the proof").await?;
    match next_frame(&mut reader, &mut read_half, peer, &mut buf).await? {
        ActiveFrame::Proof { mac } => {
            if !verify_proof(&key, peer_node, peer_attempt, &peer_nonce, &nonce, &mac) {
                return Err(LinkError::BadProof {
                    peer,
                    node: peer_node,
                });
            }
        }
        other => {
            return Err(LinkError::Unexpected {
                peer,
                expected: "proof",
                got: other.label(),
            })
        }
    }
    let own = LinkEnd {
        node: identity.node,
        nonce,
        attempt: identity.attempt,
    };
    let theirs = LinkEnd {
        node: peer_node,
        nonce: peer_nonce,
        attempt: peer_attempt,
    };
    let (sealer, opener) = channel(&key, identity.protection, &own, &theirs);
    reader.open_with(opener);
    Ok(OpenLink {
        peer_node,
        peer_attempt,
        peer,
        sealer,
        reader,
        read_half,
        write_half,
    })
}

async fn write_all(
    half: &mut OwnedWriteHalf,
    bytes: &[u8],
    peer: SocketAddr,
    what: &'static str,
) -> Result<(), LinkError> {
    half.write_all(bytes)
        .await
        .map_err(|source| LinkError::Io { peer, what, source })
}

/// The next frame from the stream, reading as much as it takes.
pub async fn next_frame(
    reader: &mut ActiveFrameReader,
    half: &mut OwnedReadHalf,
    peer: SocketAddr,
    buf: &mut [u8],
) -> Result<ActiveFrame, LinkError> {
    next_frame_and_epoch(reader, half, peer, buf)
        .await
        .map(|(_, frame)| frame)
}

/// The next frame and the epoch it was sent in, reading as much as it takes.
async fn next_frame_and_epoch(
    reader: &mut ActiveFrameReader,
    half: &mut OwnedReadHalf,
    peer: SocketAddr,
    buf: &mut [u8],
) -> Result<(u64, ActiveFrame), LinkError> {
    loop {
        if let Some(sent) = reader
            .next_frame()
            .map_err(|source| LinkError::Wire { peer, source })?
        {
            return Ok(sent);
        }
        let n = half.read(buf).await.map_err(|source| LinkError::Io {
            peer,
            what: "reading",
            source,
        })?;
        if n == 0 {
            return Err(LinkError::Closed { peer });
        }
        reader.push(&buf[..n]);
    }
}

/// Seals and writes every frame sent to the returned channel, in order, until the channel
/// closes or a write fails (then `on_end` is told why).
pub fn spawn_writer(
    mut write_half: OwnedWriteHalf,
    mut sealer: Sealer,
    peer: SocketAddr,
    epoch: u64,
    on_end: impl FnOnce(LinkError) + Send + 'static,
) -> mpsc::UnboundedSender<ActiveFrame> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ActiveFrame>();
    tokio::spawn(async move {
        let mut out = Vec::new();
        let result: Result<(), LinkError> = async {
            while let Some(frame) = rx.recv().await {
                out.clear();
                encode_sealed(&frame, epoch, &mut sealer, &mut out)
                    .map_err(|source| LinkError::Wire { peer, source })?;
                // Whatever else is queued goes in the same write.
                while out.len() < 1 << 20 {
                    let Ok(next) = rx.try_recv() else { break };
                    encode_sealed(&next, epoch, &mut sealer, &mut out)
                        .map_err(|source| LinkError::Wire { peer, source })?;
                }
                write_all(&mut write_half, &out, peer, "writing frames").await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            on_end(e);
        }
    });
    tx
}

/// Reads and opens frames, handing each to `deliver` with the epoch it was sent in, until the
/// stream ends or fails; returns why it ended.
pub async fn read_frames(
    mut reader: ActiveFrameReader,
    mut read_half: OwnedReadHalf,
    peer: SocketAddr,
    mut deliver: impl FnMut(u64, ActiveFrame) -> bool,
) -> LinkError {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match next_frame_and_epoch(&mut reader, &mut read_half, peer, &mut buf).await {
            Ok((epoch, frame)) => {
                if !deliver(epoch, frame) {
                    return LinkError::Closed { peer };
                }
            }
            Err(e) => return e,
        }
    }
}
