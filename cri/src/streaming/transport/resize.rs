//! The resize stream (SPDY) or channel 4 (WebSocket): a sequence of JSON objects
//! `{"Width":w,"Height":h}` as Go's json.Encoder writes client-go's TerminalSize (no tags, so
//! Go field names; Go's decoder also takes them in lower case). Decoded on a task of its own so
//! that a backend slow to take sizes holds up only this stream.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::TermSize;

/// Bytes of an unfinished JSON value we hold before giving up on the stream.
const MAX_PENDING: usize = 4096;
/// Sizes queued for the backend.
const QUEUE: usize = 8;

/// Splits `buf` into complete sizes; returns them and how many bytes they used. `Err`: the
/// stream is not a sequence of sizes.
fn decode(buf: &[u8]) -> Result<(Vec<TermSize>, usize), String> {
    let mut sizes = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    let mut used = 0;
    loop {
        match it.next() {
            None => return Ok((sizes, buf.len())),
            Some(Ok(v)) => {
                used = it.byte_offset();
                sizes.push(size(&v)?);
            }
            Some(Err(e)) if e.is_eof() => return Ok((sizes, used)),
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Go's decoder matches field names without regard to case.
fn size(v: &serde_json::Value) -> Result<TermSize, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{v} is not a terminal size object"))?;
    let field = |name: &str| -> Result<u16, String> {
        match obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            None => Ok(0),
            Some((_, n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("{name} {n} is not a number from 0 to 65535")),
        }
    };
    Ok(TermSize {
        width: field("width")?,
        height: field("height")?,
    })
}

/// Starts decoding `stream`; sizes arrive on the receiver, which ends with the stream.
pub(crate) fn spawn<R: AsyncRead + Send + Unpin + 'static>(
    mut stream: R,
) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            let (sizes, used) = match decode(&pending) {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("streaming: resize stream is not terminal sizes ({e}); ignoring it");
                    return;
                }
            };
            pending.drain(..used);
            for s in sizes {
                if tx.send(s).await.is_err() {
                    return;
                }
            }
            if pending.len() > MAX_PENDING {
                log::warn!(
                    "streaming: resize stream sent {MAX_PENDING} bytes without a complete size; ignoring it"
                );
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_go_encoder_output_in_pieces() {
        let all = b"{\"Width\":80,\"Height\":24}\n{\"width\":100,\"height\":40}\n";
        let (s, used) = decode(&all[..30]).unwrap();
        assert_eq!(
            s,
            vec![TermSize {
                width: 80,
                height: 24
            }]
        );
        assert!(used <= 30);
        let (s, used2) = decode(&all[used..]).unwrap();
        assert_eq!(
            s,
            vec![TermSize {
                width: 100,
                height: 40
            }]
        );
        assert_eq!(used + used2, all.len());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"[1,2]").is_err());
        assert!(decode(b"{\"Width\":70000,\"Height\":1}").is_err());
    }

    #[tokio::test]
    async fn pump_delivers_and_ends() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut rx = spawn(r);
        use tokio::io::AsyncWriteExt;
        w.write_all(b"{\"Width\":1,\"Height\":2}{\"Wid")
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 1,
                height: 2
            })
        );
        w.write_all(b"th\":3,\"Height\":4}").await.unwrap();
        assert_eq!(
            rx.recv().await,
            Some(TermSize {
                width: 3,
                height: 4
            })
        );
        drop(w);
        assert_eq!(rx.recv().await, None);
    }
}
