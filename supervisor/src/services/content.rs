//! containerd.services.content.v1.Content: blobs by digest, shared on disk, visible per namespace.
//!
//! The bytes live once in [`content::LocalStore`]; a blob is visible in a namespace, with that
//! namespace's labels, when `metadata` has a `content <ns>\0<digest>` record of it. Ingest refs are
//! per namespace too: the client's ref `R` in namespace `N` is the store ref `N/R`, so namespaces
//! cannot see, resume or abort each other's ingests.
//!
//! Write (protocol.md §5.2), as containerd's content service does it:
//!
//! ```text
//! first message: ref (required), total, expected
//!   expected visible in this namespace       → AlreadyExists (the lease, if any, gets it)
//!   expected on disk, not visible here       → record it here, AlreadyExists
//!   otherwise open/resume the ingest <ns>/<ref> (held by another stream → Unavailable)
//! each message → one response (action echoed, offset held, digest so far, total)
//!   STAT   status only
//!   WRITE  offset > 0 must equal the current offset (OutOfRange); offset 0 over data truncates
//!   COMMIT like WRITE, then verify size/digest, record the blob here with its labels and attach
//!          it to the `containerd-lease` of the call
//! ```
//!
//! Blob bytes are removed from disk only when no namespace has a record of them any more. That
//! check and the unlink run under [`BLOB_LOCK`] (write side); anything that makes bytes on disk
//! visible in a namespace holds the read side, so a delete cannot remove bytes that another
//! namespace has just started to reference (containerd's `wlock` in core/metadata).

use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use content::{ContentStore, ContentWriter, Digest, WriterOpts};
use prost_types::Timestamp;
use protocol::Code;
use protocol::filters::{Fields, Filters};
use protocol::grpc::any::{CONTENT_DELETE, pack};
use protocol::grpc::containerd::events::ContentDelete;
use protocol::grpc::containerd::services::content::v1::content_server::{Content, ContentServer};
use protocol::grpc::containerd::services::content::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status as RpcStatus, Streaming};

use super::namespaces::apply_label_mask;
use super::{Daemon, Shared, blocking, db_err, lease, namespace};
use crate::metadata::{Blob, CONTENT, LEASES, Labels, Lease, Time, key};

/// Read streams send at most this much per message (ctr reads in 1 MiB chunks too).
const READ_CHUNK: usize = 1 << 20;

/// Infos per List message.
const LIST_BATCH: usize = 256;

/// A Content.Read in progress: the next chunk from `pos`, up to `end`.
struct ChunkedRead {
    daemon: Shared,
    reader: Box<dyn content::ReaderAt>,
    digest: Digest,
    /// Set when the read covers the whole blob, which is then checked against its digest.
    hasher: Option<content::Digester>,
    pos: u64,
    end: u64,
}

impl ChunkedRead {
    /// Reads to the end, handing each chunk to `send`, until an error (sent too) or `send`
    /// answers false.
    fn each_chunk(&mut self, mut send: impl FnMut(Result<ReadContentResponse, RpcStatus>) -> bool) {
        while self.pos < self.end {
            let msg = self.next_chunk();
            let stop = msg.is_err();
            if !send(msg) || stop {
                return;
            }
        }
    }

    /// The next chunk (at most [`READ_CHUNK`] bytes). The last of a whole-blob read is
    /// DataLoss instead when the blob does not match its digest.
    fn next_chunk(&mut self) -> Result<ReadContentResponse, RpcStatus> {
        let (pos, end, digest) = (self.pos, self.end, &self.digest);
        let mut buf = vec![0u8; READ_CHUNK.min((end - pos) as usize)];
        match self.reader.read_at(&mut buf, pos) {
            Ok(0) => Err(Code::DataLoss.grpc_status(format!(
                "read of {digest}: blob ended at {pos}, expected {end} bytes"
            ))),
            Ok(n) => {
                buf.truncate(n);
                if let Some(h) = &mut self.hasher {
                    h.update(&buf);
                }
                self.pos += n as u64;
                match self.hasher.take_if(|_| self.pos == end).map(|h| h.digest()) {
                    Some(actual) if actual != *digest => {
                        Err(crate::integrity::damaged(&self.daemon, digest, actual))
                    }
                    _ => Ok(ReadContentResponse {
                        offset: pos as i64,
                        data: buf.into(),
                    }),
                }
            }
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Read side: making bytes on disk visible in a namespace. Write side: removing bytes from disk
/// after checking no namespace references them. Process-wide, which is at worst more
/// serialisation when several daemons share a process (tests).
pub static BLOB_LOCK: RwLock<()> = RwLock::new(());

pub struct ContentService {
    pub daemon: Shared,
}

pub fn server(daemon: Shared) -> ContentServer<ContentService> {
    ContentServer::new(ContentService { daemon })
}

pub fn timestamp(t: Time) -> Timestamp {
    Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

fn system_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn store_err(e: content::Error) -> RpcStatus {
    e.code().grpc_status(e.to_string())
}

fn parse_digest(s: &str) -> Result<Digest, RpcStatus> {
    Digest::parse(s).map_err(store_err)
}

fn not_found(d: &str) -> RpcStatus {
    Code::NotFound.grpc_status(format!("content digest {d}: not found"))
}

fn already_exists(d: &str) -> RpcStatus {
    Code::AlreadyExists.grpc_status(format!("content {d}: already exists"))
}

/// The store ref of client ref `r` in namespace `ns`.
fn store_ref(ns: &str, r: &str) -> String {
    format!("{ns}/{r}")
}

fn check_ref(r: &str) -> Result<(), RpcStatus> {
    if r.is_empty() {
        return Err(Code::InvalidArgument.grpc_status("ref must not be empty"));
    }
    Ok(())
}

fn to_wire(digest: &str, b: &Blob) -> Info {
    Info {
        digest: digest.to_string(),
        size: b.size,
        created_at: Some(timestamp(b.created_at)),
        updated_at: Some(timestamp(b.updated_at)),
        labels: b.labels.clone().into_iter().collect(),
    }
}

fn status_to_wire(client_ref: String, s: &content::Status) -> Status {
    Status {
        started_at: Some(system_timestamp(s.started_at)),
        updated_at: Some(system_timestamp(s.updated_at)),
        r#ref: client_ref,
        offset: s.offset as i64,
        total: s.total.unwrap_or(0) as i64,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// A blob record as the filter language sees it (fields `digest`, `size`, `labels.<k>`).
struct BlobFields<'a>(&'a str, &'a Blob);

impl Fields for BlobFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.0.to_string()),
            [f] if f == "size" => Some(self.1.size.to_string()),
            [f, k @ ..] if f == "labels" && !k.is_empty() => {
                self.1.labels.get(&k.join(".")).cloned()
            }
            _ => None,
        }
    }
}

fn check_labels(labels: &Labels) -> Result<(), RpcStatus> {
    content::validate_labels(labels).map_err(store_err)
}

/// Records blob `digest` (already on disk) in `ns` and attaches it to `lease`, in one
/// transaction. Returns false if `ns` already had it (its labels are then left alone).
/// Callers hold [`BLOB_LOCK`] (read).
fn record_blob(
    d: &Daemon,
    ns: &str,
    digest: &str,
    size: u64,
    labels: Labels,
    lease: Option<&str>,
) -> Result<bool, RpcStatus> {
    let tx = d.db.write().map_err(db_err)?;
    if let Some(l) = lease {
        tx.add_lease_resource(ns, l, "content", digest)
            .map_err(db_err)?;
    }
    let created = tx
        .record_blob(ns, digest, size, labels, false)
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(created)
}

fn check_lease(d: &Daemon, ns: &str, lease: Option<&str>) -> Result<(), RpcStatus> {
    if let Some(l) = lease
        && d.db
            .get::<Lease>(LEASES, &key(ns, &[l]))
            .map_err(db_err)?
            .is_none()
    {
        return Err(Code::NotFound.grpc_status(format!("lease {l}: not found")));
    }
    Ok(())
}

/// One Write stream's state.
struct Session {
    ns: String,
    lease: Option<String>,
    writer: Box<dyn ContentWriter>,
    total: Option<u64>,
    expected: Option<Digest>,
}

/// Handles the first message of a Write stream: the AlreadyExists cases, else opens the ingest.
fn open_session(
    d: &Daemon,
    ns: String,
    lease: Option<String>,
    first: &WriteContentRequest,
) -> Result<Session, RpcStatus> {
    check_ref(&first.r#ref)?;
    let total = (first.total > 0).then_some(first.total as u64);
    let expected = if first.expected.is_empty() {
        None
    } else {
        Some(parse_digest(&first.expected)?)
    };
    check_lease(d, &ns, lease.as_deref())?;
    if let Some(exp) = expected {
        let _g = BLOB_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let digest = exp.to_string();
        let visible =
            d.db.get::<Blob>(CONTENT, &key(&ns, &[&digest]))
                .map_err(db_err)?;
        if let Some(b) = visible {
            // Still attach it to the lease, so that the caller's later references hold.
            if lease.is_some() {
                record_blob(
                    d,
                    &ns,
                    &digest,
                    b.size as u64,
                    Labels::new(),
                    lease.as_deref(),
                )?;
            }
            return Err(already_exists(&digest));
        }
        match d.content.info(&exp) {
            Ok(info) if total.is_none_or(|t| t == info.size) => {
                // Shared content (containerd's default policy): another namespace brought the
                // bytes; make them visible here without a second upload.
                record_blob(d, &ns, &digest, info.size, Labels::new(), lease.as_deref())?;
                return Err(already_exists(&digest));
            }
            Ok(_) | Err(_) => {}
        }
    }
    let mut opts = WriterOpts::new(store_ref(&ns, &first.r#ref));
    opts.total = total;
    opts.expected = expected;
    let writer = d.content.writer(opts).map_err(|e| match e {
        // The store names its (namespaced) ref; say which one the client used.
        content::Error::RefLocked(_) => Code::Unavailable.grpc_status(format!(
            "ref {}: locked by another writer (unavailable)",
            first.r#ref
        )),
        e => store_err(e),
    })?;
    // As containerd: an ingest opened under a lease goes when the lease goes (deleted or
    // expired), so a client that gives up, e.g. on a full disk, leaves no partial ingest.
    if let Some(l) = &lease {
        let tx = d.db.write().map_err(db_err)?;
        tx.add_lease_resource(&ns, l, "ingests", &first.r#ref)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
    }
    Ok(Session {
        ns,
        lease,
        writer,
        total,
        expected,
    })
}

/// Handles one message of a Write stream and returns its response.
fn step(
    d: &Daemon,
    s: &mut Session,
    req: WriteContentRequest,
) -> Result<WriteContentResponse, RpcStatus> {
    if req.total > 0 {
        s.total = Some(req.total as u64);
    }
    if !req.expected.is_empty() {
        s.expected = Some(parse_digest(&req.expected)?);
    }
    let mut resp = WriteContentResponse {
        action: req.action,
        total: s.total.unwrap_or(0) as i64,
        ..Default::default()
    };
    let action = WriteAction::try_from(req.action).map_err(|_| {
        Code::InvalidArgument.grpc_status(format!("unknown write action {}", req.action))
    })?;
    match action {
        WriteAction::Stat => {
            let st = s.writer.status().map_err(store_err)?;
            resp.started_at = Some(system_timestamp(st.started_at));
            resp.updated_at = Some(system_timestamp(st.updated_at));
        }
        WriteAction::Write | WriteAction::Commit => {
            let current = s.writer.offset();
            if req.offset < 0 {
                return Err(Code::InvalidArgument
                    .grpc_status(format!("write offset {} is negative", req.offset)));
            }
            if req.offset > 0 && req.offset as u64 != current {
                return Err(Code::OutOfRange.grpc_status(format!(
                    "write @{} must occur at current offset {current}",
                    req.offset
                )));
            }
            if req.offset == 0 && current > 0 {
                s.writer.truncate(0).map_err(store_err)?;
            }
            if !req.data.is_empty() {
                s.writer.write_all(&req.data).map_err(store_err)?;
            }
            if action == WriteAction::Commit {
                commit(d, s, req.labels.into_iter().collect())?;
            }
        }
    }
    resp.offset = s.writer.offset() as i64;
    resp.digest = s.writer.digest().to_string();
    Ok(resp)
}

fn commit(d: &Daemon, s: &mut Session, labels: Labels) -> Result<(), RpcStatus> {
    check_labels(&labels)?;
    check_lease(d, &s.ns, s.lease.as_deref())?;
    let size = s.writer.offset();
    let _g = BLOB_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let digest = match s.writer.commit(s.total, s.expected.as_ref(), Labels::new()) {
        Ok(d) => d,
        // The bytes are on disk already (another namespace, or an earlier upload): fine, the
        // ingest matched them; what matters is the record here.
        Err(content::Error::AlreadyExists(d)) => d,
        Err(e) => return Err(store_err(e)),
    };
    let digest = digest.to_string();
    if !record_blob(d, &s.ns, &digest, size, labels, s.lease.as_deref())? {
        return Err(already_exists(&digest));
    }
    Ok(())
}

/// Aborts the ingests `refs` (client refs) of `ns`, as the lease holding them is gone. One
/// still being written is left to its writer.
pub fn abort_ingests(d: &Daemon, ns: &str, refs: &[String]) {
    for r in refs {
        match d.content.abort(&store_ref(ns, r)) {
            Ok(()) => log::debug!("ingest {ns}/{r}: aborted with its lease"),
            Err(content::Error::RefNotFound(_)) => {}
            Err(e) => log::warn!("ingest {ns}/{r}: its lease is gone, but: {e}"),
        }
    }
}

/// Removes the record of `digest` in `ns`, then the bytes if no namespace has them any more.
/// NotFound if `ns` has no such blob.
pub fn delete_blob(d: &Daemon, ns: &str, digest: &Digest) -> Result<(), RpcStatus> {
    let name = digest.to_string();
    let _g = BLOB_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let tx = d.db.write().map_err(db_err)?;
    if !tx.delete(CONTENT, &key(ns, &[&name])).map_err(db_err)? {
        return Err(not_found(&name));
    }
    let referenced = tx.blob_referenced(&name).map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    if !referenced {
        // Metadata first, then the data: a crash in between leaves an orphan blob that the
        // next delete or GC removes, never a record without bytes.
        match d.content.delete(digest) {
            Ok(()) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => log::warn!("content: remove unreferenced blob {name}: {e}"),
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, RpcStatus> {
        let ns = namespace(&req)?;
        let digest = parse_digest(&req.into_inner().digest)?.to_string();
        let d = self.daemon.clone();
        let info = blocking(move || {
            let rec =
                d.db.get::<Blob>(CONTENT, &key(&ns, &[&digest]))
                    .map_err(db_err)?
                    .ok_or_else(|| not_found(&digest))?;
            Ok(to_wire(&digest, &rec))
        })
        .await?;
        Ok(Response::new(InfoResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, RpcStatus> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let info = req
            .info
            .ok_or_else(|| Code::InvalidArgument.grpc_status("info is required"))?;
        let digest = parse_digest(&info.digest)?.to_string();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let d = self.daemon.clone();
        let updated = blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            let k = key(&ns, &[&digest]);
            let mut rec = tx
                .get::<Blob>(CONTENT, &k)
                .map_err(db_err)?
                .ok_or_else(|| not_found(&digest))?;
            apply_label_mask(&mut rec.labels, &info.labels, &paths)?;
            check_labels(&rec.labels)?;
            rec.updated_at = Time::now();
            tx.put(CONTENT, &k, &rec).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(to_wire(&digest, &rec))
        })
        .await?;
        Ok(Response::new(UpdateResponse {
            info: Some(updated),
        }))
    }

    async fn list(
        &self,
        req: Request<ListContentRequest>,
    ) -> Result<Response<BoxStream<ListContentResponse>>, RpcStatus> {
        let ns = namespace(&req)?;
        let filters = Filters::parse_all(&req.into_inner().filters)
            .map_err(|e| e.code().grpc_status(e.to_string()))?;
        let d = self.daemon.clone();
        let infos = blocking(move || {
            let all = d.db.list::<Blob>(CONTENT, &ns).map_err(db_err)?;
            Ok(all
                .iter()
                .filter_map(|(k, b)| {
                    let digest = k.get(ns.len() + 1..)?;
                    filters
                        .matches(&BlobFields(digest, b))
                        .then(|| to_wire(digest, b))
                })
                .collect::<Vec<_>>())
        })
        .await?;
        let batches: Vec<Result<ListContentResponse, RpcStatus>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, req: Request<DeleteContentRequest>) -> Result<Response<()>, RpcStatus> {
        let ns = namespace(&req)?;
        let digest = parse_digest(&req.into_inner().digest)?;
        let d = self.daemon.clone();
        let n = ns.clone();
        blocking(move || delete_blob(&d, &n, &digest)).await?;
        self.daemon.events.publish(
            &ns,
            "/content/delete",
            pack(
                CONTENT_DELETE,
                &ContentDelete {
                    digest: digest.to_string(),
                },
            ),
        );
        Ok(Response::new(()))
    }

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<BoxStream<ReadContentResponse>>, RpcStatus> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let digest = parse_digest(&req.digest)?;
        if req.offset < 0 || req.size < 0 {
            return Err(Code::InvalidArgument.grpc_status(format!(
                "read of {digest}: offset {} and size {} must not be negative",
                req.offset, req.size
            )));
        }
        let d = self.daemon.clone();
        let reader = blocking(move || {
            let name = digest.to_string();
            if d.db
                .get::<Blob>(CONTENT, &key(&ns, &[&name]))
                .map_err(db_err)?
                .is_none()
            {
                return Err(not_found(&name));
            }
            d.content.reader_at(&digest).map_err(|e| match e {
                content::Error::NotFound(_) => crate::integrity::missing(&d, &ns, &digest),
                e => store_err(e),
            })
        })
        .await?;
        let blob_size = reader.size();
        let offset = req.offset as u64;
        if offset > blob_size {
            return Err(Code::OutOfRange.grpc_status(format!(
                "read of {digest} at offset {offset} is past its end ({blob_size} bytes)"
            )));
        }
        let end = if req.size > 0 {
            blob_size.min(offset.saturating_add(req.size as u64))
        } else {
            blob_size
        };
        // A read of the whole blob is checked against its digest: damage found at the end
        // replaces the last chunk with DataLoss, so a client never gets wrong bytes as a
        // complete blob. (A partial read cannot be checked.)
        if end == offset {
            return Ok(Response::new(Box::pin(tokio_stream::empty())));
        }
        let hasher = (offset == 0 && end == blob_size).then(content::Digester::new);
        let mut read = ChunkedRead {
            daemon: self.daemon.clone(),
            reader,
            digest,
            hasher,
            pos: offset,
            end,
        };
        if end - offset <= READ_CHUNK as u64 {
            // Manifests and configs, most reads: at most a chunk, read in one store turn
            // instead of on a thread of the blocking pool held for the stream.
            let msgs = blocking(move || {
                let mut msgs = Vec::new();
                read.each_chunk(|m| {
                    msgs.push(m);
                    true
                });
                Ok(msgs)
            })
            .await?;
            return Ok(Response::new(Box::pin(tokio_stream::iter(msgs))));
        }
        let (tx, rx) = mpsc::channel(4);
        // The client went away: stop reading.
        tokio::task::spawn_blocking(move || read.each_chunk(|m| tx.blocking_send(m).is_ok()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, RpcStatus> {
        let ns = namespace(&req)?;
        let r = req.into_inner().r#ref;
        check_ref(&r)?;
        let d = self.daemon.clone();
        let status = blocking(move || {
            let st = d.content.status(&store_ref(&ns, &r)).map_err(|e| match e {
                content::Error::RefNotFound(_) => {
                    Code::NotFound.grpc_status(format!("ref {r}: not found"))
                }
                e => store_err(e),
            })?;
            Ok(status_to_wire(r, &st))
        })
        .await?;
        Ok(Response::new(StatusResponse {
            status: Some(status),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, RpcStatus> {
        let ns = namespace(&req)?;
        let filters = Filters::parse_all(&req.into_inner().filters)
            .map_err(|e| e.code().grpc_status(e.to_string()))?;
        let d = self.daemon.clone();
        let statuses = blocking(move || {
            let prefix = store_ref(&ns, "");
            let all = d.content.list_statuses(&[]).map_err(store_err)?;
            Ok(all
                .into_iter()
                .filter_map(|mut st| {
                    // Filters apply to the client's ref, not the namespaced one.
                    st.reference = st.reference.strip_prefix(&prefix)?.to_string();
                    filters
                        .matches(&st)
                        .then(|| status_to_wire(st.reference.clone(), &st))
                })
                .collect())
        })
        .await?;
        Ok(Response::new(ListStatusesResponse { statuses }))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<BoxStream<WriteContentResponse>>, RpcStatus> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let mut incoming = req.into_inner();
        let first = incoming.message().await?.ok_or_else(|| {
            Code::InvalidArgument.grpc_status("write stream ended before its first message")
        })?;
        if first.r#ref.is_empty() {
            return Err(Code::InvalidArgument
                .grpc_status("first message of a write stream must carry a ref"));
        }
        let d = self.daemon.clone();
        let f = first.clone();
        let mut session = blocking(move || open_session(&d, ns, lease, &f)).await?;
        let (tx, rx) = mpsc::channel(4);
        let d = self.daemon.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let req = match next.take() {
                    Some(r) => r,
                    None => match incoming.message().await {
                        Ok(Some(r)) => r,
                        // The client closed its side: the ingest stays for a later resume.
                        Ok(None) => break,
                        // A message past the limit, or a broken stream: the client is
                        // told why (a client that went away does not mind).
                        Err(e) => {
                            log::debug!("content write: stream error: {e}");
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    },
                };
                let d = d.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let r = step(&d, &mut session, req);
                    (session, r)
                })
                .await;
                let (s, resp) = match done {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Code::Internal.grpc_status(format!("write worker: {e}"))))
                            .await;
                        break;
                    }
                };
                session = s;
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<AbortRequest>) -> Result<Response<()>, RpcStatus> {
        let ns = namespace(&req)?;
        let r = req.into_inner().r#ref;
        check_ref(&r)?;
        let d = self.daemon.clone();
        blocking(move || {
            d.content.abort(&store_ref(&ns, &r)).map_err(|e| match e {
                content::Error::RefNotFound(_) => {
                    Code::NotFound.grpc_status(format!("ref {r}: not found"))
                }
                e => store_err(e),
            })
        })
        .await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Exchange;
    use crate::metadata::{Db, LEASE_RESOURCES};

    fn daemon(dir: &std::path::Path) -> Daemon {
        Daemon {
            db: Db::open(&dir.join("meta.redb")).unwrap(),
            events: Exchange::default(),
            root: dir.to_path_buf(),
            content: std::sync::Arc::new(content::LocalStore::open(dir.join("content")).unwrap()),
            snapshotters: Default::default(),
            gc: Default::default(),
        }
    }

    fn msg(action: WriteAction, r: &str, offset: i64, data: &[u8]) -> WriteContentRequest {
        WriteContentRequest {
            action: action as i32,
            r#ref: r.into(),
            offset,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn open(d: &Daemon, ns: &str, r: &str, expected: &str) -> Result<Session, RpcStatus> {
        let mut first = msg(WriteAction::Stat, r, 0, b"");
        first.expected = expected.into();
        open_session(d, ns.into(), None, &first)
    }

    /// Writes `data` in one session and commits it in `ns`.
    fn put(d: &Daemon, ns: &str, data: &[u8]) -> String {
        let mut s = open(d, ns, "put", "").unwrap();
        step(d, &mut s, msg(WriteAction::Write, "", 0, data)).unwrap();
        let resp = step(
            d,
            &mut s,
            msg(WriteAction::Commit, "", data.len() as i64, b""),
        )
        .unwrap();
        resp.digest
    }

    #[test]
    fn offsets_resume_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let mut s = open(&d, "a", "r1", "").unwrap();
        let r = step(&d, &mut s, msg(WriteAction::Write, "", 0, b"hello ")).unwrap();
        assert_eq!(r.offset, 6);
        let e = step(&d, &mut s, msg(WriteAction::Write, "", 3, b"x")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
        assert!(e.message().contains("current offset 6"), "{e:?}");
        // A second stream on the same ref while the first holds it.
        let e = open(&d, "a", "r1", "").err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("r1"), "{e:?}");
        // The same ref in another namespace is another ingest.
        let other = open(&d, "b", "r1", "").unwrap();
        assert_eq!(other.writer.offset(), 0);
        drop(other);
        drop(s);
        // Resume where the first stream stopped.
        let mut s = open(&d, "a", "r1", "").unwrap();
        let r = step(&d, &mut s, msg(WriteAction::Stat, "", 0, b"")).unwrap();
        assert_eq!(r.offset, 6);
        step(&d, &mut s, msg(WriteAction::Write, "", 6, b"world")).unwrap();
        // Offset 0 over held data starts over.
        let r = step(&d, &mut s, msg(WriteAction::Write, "", 0, b"abc")).unwrap();
        assert_eq!(r.offset, 3);
        let mut commit = msg(WriteAction::Commit, "", 3, b"");
        commit.labels = [("k".to_string(), "v".to_string())].into();
        let r = step(&d, &mut s, commit).unwrap();
        assert_eq!(r.digest, Digest::of(b"abc").to_string());
        let rec: Blob = d.db.get(CONTENT, &key("a", &[&r.digest])).unwrap().unwrap();
        assert_eq!((rec.size, rec.labels["k"].as_str()), (3, "v"));
        assert!(
            d.db.get::<Blob>(CONTENT, &key("b", &[&r.digest]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn commit_verifies_and_stores_nothing_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let wrong = Digest::of(b"other").to_string();
        let mut s = open(&d, "a", "r", &wrong).unwrap();
        step(&d, &mut s, msg(WriteAction::Write, "", 0, b"data")).unwrap();
        let e = step(&d, &mut s, msg(WriteAction::Commit, "", 4, b"")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(&wrong), "{e:?}");
        assert!(d.db.list::<Blob>(CONTENT, "a").unwrap().is_empty());
        assert!(d.content.info(&Digest::of(b"data")).is_err());
    }

    #[test]
    fn expected_content_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let digest = put(&d, "a", b"shared bytes");
        // Visible here: AlreadyExists.
        let e = open(&d, "a", "again", &digest).err().unwrap();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        // On disk but not visible in b: made visible, and AlreadyExists like containerd.
        assert!(
            d.db.get::<Blob>(CONTENT, &key("b", &[&digest]))
                .unwrap()
                .is_none()
        );
        let e = open(&d, "b", "x", &digest).err().unwrap();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        let rec: Blob = d.db.get(CONTENT, &key("b", &[&digest])).unwrap().unwrap();
        assert_eq!(rec.size, 12);
        // Deleting in a keeps the bytes for b; deleting in b too removes them.
        let dg = Digest::parse(&digest).unwrap();
        delete_blob(&d, "a", &dg).unwrap();
        assert!(d.content.info(&dg).is_ok());
        let e = delete_blob(&d, "a", &dg).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        delete_blob(&d, "b", &dg).unwrap();
        assert!(
            d.content.info(&dg).is_err(),
            "unreferenced blob left on disk"
        );
    }

    #[test]
    fn commit_attaches_to_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let first = msg(WriteAction::Stat, "r", 0, b"");
        let e = open_session(&d, "a".into(), Some("l1".into()), &first)
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let tx = d.db.write().unwrap();
        let lease = Lease {
            labels: Labels::new(),
            created_at: Time::now(),
        };
        tx.put(LEASES, &key("a", &["l1"]), &lease).unwrap();
        tx.commit().unwrap();
        let mut s = open_session(&d, "a".into(), Some("l1".into()), &first).unwrap();
        step(&d, &mut s, msg(WriteAction::Write, "", 0, b"leased")).unwrap();
        let r = step(&d, &mut s, msg(WriteAction::Commit, "", 6, b"")).unwrap();
        let k = key("a", &["l1", "content", &r.digest]);
        assert!(d.db.get::<()>(LEASE_RESOURCES, &k).unwrap().is_some());
    }

    #[test]
    fn filters_see_digest_size_and_labels() {
        let b = Blob {
            size: 42,
            labels: [("containerd.io/gc.root".to_string(), "x".to_string())].into(),
            created_at: Time::now(),
            updated_at: Time::now(),
        };
        let f = |s: &str| {
            Filters::parse_all(&[s])
                .unwrap()
                .matches(&BlobFields("sha256:ab", &b))
        };
        assert!(f("size==42"));
        assert!(f("digest==sha256:ab"));
        assert!(f(r#"labels."containerd.io/gc.root""#));
        assert!(!f("labels.other"));
        assert!(!f("size==41"));
    }
}
