//! corral.services.transfer.v1.Transfer: image pull and unpack in the daemon (`crate::pull`)
//! on the wire.
//!
//! Pull streams one `PullProgress{blob}` per progress event and ends with
//! `PullProgress{result}`; a failure ends the stream with the error's status instead. Unpack
//! answers once. Both run in a task of their own: a client that disconnects does not leave a
//! half-done pull or unpack behind (it completes, or fails and cleans up, on its own).

use protocol::Code;
use protocol::grpc::corral::services::transfer::v1::transfer_server::{Transfer, TransferServer};
use protocol::grpc::corral::services::transfer::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::images::{descriptor_from_wire, descriptor_to_wire};
use super::{Shared, namespace};
use crate::pull::{self, Credentials as PullCredentials, Kind, Progress, Settings, State};

pub struct TransferService {
    daemon: Shared,
    settings: Settings,
}

pub fn server(daemon: Shared, settings: Settings) -> TransferServer<TransferService> {
    TransferServer::new(TransferService { daemon, settings })
}

fn kind_to_wire(k: Kind) -> BlobKind {
    match k {
        Kind::Index => BlobKind::Index,
        Kind::Manifest => BlobKind::Manifest,
        Kind::Config => BlobKind::Config,
        Kind::Layer => BlobKind::Layer,
    }
}

fn state_to_wire(s: State) -> BlobState {
    match s {
        State::Waiting => BlobState::Waiting,
        State::Downloading => BlobState::Downloading,
        State::Downloaded => BlobState::Downloaded,
        State::Unpacking => BlobState::Unpacking,
        State::Unpacked => BlobState::Unpacked,
        State::Exists => BlobState::Exists,
        State::Done => BlobState::Done,
    }
}

fn progress_to_wire(p: Progress) -> PullProgress {
    PullProgress {
        blob: Some(BlobProgress {
            digest: p.digest,
            media_type: p.media_type,
            kind: kind_to_wire(p.kind) as i32,
            index: p.index,
            total: p.total,
            offset: p.offset,
            state: state_to_wire(p.state) as i32,
        }),
        result: None,
    }
}

fn credentials_from_wire(c: Option<Credentials>) -> Result<Option<PullCredentials>, Status> {
    let Some(c) = c else { return Ok(None) };
    if !c.identity_token.is_empty() {
        return Ok(Some(PullCredentials::Token(c.identity_token)));
    }
    if c.username.is_empty() {
        if c.password.is_empty() {
            return Ok(None);
        }
        return Err(Code::InvalidArgument.grpc_status("credentials: a password needs a username"));
    }
    Ok(Some(PullCredentials::Basic {
        username: c.username,
        password: c.password,
    }))
}

#[tonic::async_trait]
impl Transfer for TransferService {
    async fn pull(
        &self,
        req: Request<PullRequest>,
    ) -> Result<Response<BoxStream<PullProgress>>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let request = pull::Request {
            reference: r.reference,
            platform: r.platform,
            plain_http: r.plain_http,
            credentials: credentials_from_wire(r.credentials)?,
            unpack: r.unpack.unwrap_or(true),
            snapshotter: r.snapshotter,
        };
        let (out, rx) = mpsc::channel::<Result<PullProgress, Status>>(64);
        let (events, mut progress) = mpsc::channel::<Progress>(64);
        let forward = {
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(p) = progress.recv().await {
                    // The client went away: keep draining so the pull is never blocked.
                    let _ = out.send(Ok(progress_to_wire(p))).await;
                }
            })
        };
        let (d, settings) = (self.daemon.clone(), self.settings.clone());
        tokio::spawn(async move {
            let result = pull::pull(d, &ns, request, &settings, events).await;
            // Every progress message goes out before the result.
            let _ = forward.await;
            let last = match result {
                Ok(p) => Ok(PullProgress {
                    blob: None,
                    result: Some(PullResult {
                        name: p.name,
                        target: Some(descriptor_to_wire(&p.target)),
                        manifest: Some(descriptor_to_wire(&p.manifest)),
                        chain_id: p.chain_id,
                        snapshotter: p.snapshotter,
                    }),
                }),
                Err(e) => Err(e.code().grpc_status(e.to_string())),
            };
            let _ = out.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn unpack(
        &self,
        req: Request<UnpackRequest>,
    ) -> Result<Response<UnpackResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let manifest = r
            .manifest
            .ok_or_else(|| Code::InvalidArgument.grpc_status("unpack: no manifest descriptor"))?;
        let snapshotter = if r.snapshotter.is_empty() {
            "overlayfs".to_string()
        } else {
            r.snapshotter
        };
        let (d, sn) = (self.daemon.clone(), snapshotter.clone());
        let task = tokio::spawn(async move {
            pull::unpack_manifest(d, &ns, descriptor_from_wire(manifest), &sn).await
        });
        let chain_id = task
            .await
            .map_err(|e| Code::Internal.grpc_status(format!("unpack task: {e}")))?
            .map_err(|e| e.code().grpc_status(e.to_string()))?;
        Ok(Response::new(UnpackResponse {
            chain_id,
            snapshotter,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        assert_eq!(credentials_from_wire(None).unwrap(), None);
        assert_eq!(
            credentials_from_wire(Some(Credentials::default())).unwrap(),
            None
        );
        assert_eq!(
            credentials_from_wire(Some(Credentials {
                username: "u".into(),
                password: "p".into(),
                identity_token: String::new(),
            }))
            .unwrap(),
            Some(PullCredentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            credentials_from_wire(Some(Credentials {
                identity_token: "t".into(),
                ..Default::default()
            }))
            .unwrap(),
            Some(PullCredentials::Token("t".into()))
        );
        let e = credentials_from_wire(Some(Credentials {
            password: "p".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
