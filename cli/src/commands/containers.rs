//! Containers and their tasks: run, exec, ps, logs, kill, stop, rm, pause, resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use protocol::grpc::any;
use protocol::grpc::containerd::services::containers::v1::{self as containers, Container};
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use protocol::grpc::containerd::v1::types::{Process, Status as TaskStatus};
use protocol::grpc::tonic::Code;
use serde_json::json;

use crate::client::{Client, SNAPSHOTTER, is_not_found, nanos, rpc_err};
use crate::image;
use crate::output;
use crate::spec::{self, ProcessOpts};
use crate::stdio::{self, Attached, Fifos, RawTerminal};
use crate::{ExecArgs, ExitCode, KillArgs, LogsArgs, Output, RmArgs, RunArgs, StopArgs};

const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";

pub fn log_path(log_dir: &Path, ns: &str, id: &str) -> PathBuf {
    log_dir.join(ns).join(format!("{id}.log"))
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// A random-enough container id: 12 hex digits from the clock and our pid.
fn generate_id() -> String {
    let n = nanos() ^ ((std::process::id() as u128) << 64);
    let h = image::sha256_digest(&n.to_le_bytes());
    h["sha256:".len().."sha256:".len() + 12].to_string()
}

async fn get_container(client: &Client, id: &str) -> Result<Container> {
    client
        .containers()
        .get(client.req(containers::GetContainerRequest { id: id.into() }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("container {id}"))?
        .into_inner()
        .container
        .ok_or_else(|| anyhow!("container {id}: the daemon returned nothing"))
}

/// The container's task (None when it has none).
async fn get_task(client: &Client, id: &str) -> Result<Option<Process>> {
    match client
        .tasks()
        .get(client.req(tasks::GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().process),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(rpc_err(s)).with_context(|| format!("task of {id}")),
    }
}

/// The image, pulled first if it is not here; unpacked if it is not yet.
async fn ensure_image(client: &Client, reference: &str) -> Result<image::Resolved> {
    let mut name = reference.to_string();
    let img = match image::resolve(client, &name).await {
        Ok(i) => i,
        Err(e) if is_not_found(&e) => {
            let normal = image::normalize(reference);
            match image::resolve(client, &normal).await {
                Ok(i) => i,
                Err(e) if is_not_found(&e) => {
                    let args = crate::PullArgs {
                        plain_http: false,
                        platform: None,
                        user: None,
                        reference: reference.into(),
                    };
                    name = crate::commands::pull::pull_to(client, &args, true)
                        .await
                        .with_context(|| {
                            format!("image {reference} is not here and cannot be pulled")
                        })?;
                    image::resolve(client, &name).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if !crate::store::is_unpacked(client, &img).await? {
        let leased = client.with_lease(Duration::from_secs(3600)).await?;
        let r = crate::store::unpack_image(&leased, &img).await;
        let _ = leased.end_lease().await;
        r.with_context(|| format!("cannot unpack {}", img.name))?;
    }
    Ok(img)
}

pub async fn run(client: &Client, a: RunArgs, log_dir: &Path) -> Result<i32> {
    let id = a.name.clone().unwrap_or_else(generate_id);
    let img = ensure_image(client, &a.image).await?;
    let opts = ProcessOpts {
        args: a.command.clone(),
        env: a.env.clone(),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        terminal: a.tty,
    };
    let spec = spec::generate(&client.namespace, &id, &img.config.config, &opts, &a.mounts)?;
    let top = img
        .chain_ids()
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("image {} has no layers", img.name))?;

    // The snapshot and the container record are made under a lease, so a crash between the
    // two leaves nothing that is not collected.
    let leased = client.with_lease(Duration::from_secs(3600)).await?;
    let created = create_container(&leased, &id, &img, &top, &a.runtime, &spec).await;
    let _ = leased.end_lease().await;
    let mounts = created?;

    let result = start_and_wait(client, &a, &id, mounts, log_dir).await;
    if a.rm && !a.detach {
        let cleanup = remove(client, &id, true, log_dir).await;
        if let (Ok(_), Err(e)) = (&result, cleanup) {
            return Err(e);
        }
    }
    result
}

async fn create_container(
    client: &Client,
    id: &str,
    img: &image::Resolved,
    top: &str,
    runtime: &str,
    spec: &serde_json::Value,
) -> Result<Vec<protocol::grpc::containerd::types::Mount>> {
    match client
        .containers()
        .get(client.req(containers::GetContainerRequest { id: id.into() }))
        .await
    {
        Ok(_) => bail!("container {id} already exists"),
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(rpc_err(s)).with_context(|| format!("container {id}")),
    }
    let mounts = client
        .snapshots()
        .prepare(client.req(snapshots::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.into(),
            parent: top.into(),
            labels: HashMap::new(),
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot prepare the root filesystem of {id}"))?
        .into_inner()
        .mounts;
    let mut labels = HashMap::new();
    if !img.config.config.stop_signal.is_empty() {
        labels.insert(
            STOP_SIGNAL_LABEL.to_string(),
            img.config.config.stop_signal.clone(),
        );
    }
    let c = Container {
        id: id.into(),
        labels,
        image: img.name.clone(),
        runtime: Some(containers::container::Runtime {
            name: runtime.into(),
            options: None,
        }),
        spec: Some(any::pack_raw(any::OCI_SPEC, serde_json::to_vec(spec)?)),
        snapshotter: SNAPSHOTTER.into(),
        snapshot_key: id.into(),
        ..Default::default()
    };
    if let Err(s) = client
        .containers()
        .create(client.req(containers::CreateContainerRequest { container: Some(c) }))
        .await
    {
        crate::store::remove_snapshot(client, id).await;
        return Err(rpc_err(s)).with_context(|| format!("cannot create container {id}"));
    }
    Ok(mounts)
}

async fn start_and_wait(
    client: &Client,
    a: &RunArgs,
    id: &str,
    rootfs: Vec<protocol::grpc::containerd::types::Mount>,
    log_dir: &Path,
) -> Result<i32> {
    if a.detach {
        let log = log_path(log_dir, &client.namespace, id);
        let uri = format!("file://{}?max-size={}", log.display(), a.log_max_size);
        client
            .tasks()
            .create(client.req(tasks::CreateTaskRequest {
                container_id: id.into(),
                rootfs,
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: if a.tty { String::new() } else { uri },
                terminal: a.tty,
                ..Default::default()
            }))
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot create the task of {id}"))?;
        client
            .tasks()
            .start(client.req(tasks::StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot start {id}"))?;
        println!("{id}");
        return Ok(0);
    }
    let fifos = Fifos::new(id, a.interactive, a.tty)?;
    let (stdin, stdout, stderr) = fifos.uris();
    client
        .tasks()
        .create(client.req(tasks::CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            stdin,
            stdout,
            stderr,
            terminal: a.tty,
            ..Default::default()
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot create the task of {id}"))?;
    attach_start_wait(client, &fifos, id, "", a.tty).await
}

/// Copies stdio, starts the process, waits for it; the exit code.
async fn attach_start_wait(
    client: &Client,
    fifos: &Fifos,
    id: &str,
    exec_id: &str,
    tty: bool,
) -> Result<i32> {
    let attached = Attached::start(fifos, client, id, exec_id)?;
    let raw = if tty && stdio::is_terminal(&std::io::stdin()) {
        RawTerminal::enter()
    } else {
        None
    };
    // Wait is issued before Start so an instant exit is not missed.
    let c = client.clone();
    let (cid, eid) = (id.to_string(), exec_id.to_string());
    let wait = tokio::spawn(async move {
        c.tasks()
            .wait(c.req(tasks::WaitRequest {
                container_id: cid,
                exec_id: eid,
            }))
            .await
    });
    if let Err(s) = client
        .tasks()
        .start(client.req(tasks::StartRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        }))
        .await
    {
        wait.abort();
        drop(raw);
        return Err(rpc_err(s)).with_context(|| format!("cannot start {id}"));
    }
    attached.started();
    let resize = tty.then(|| stdio::forward_resize(client, id, exec_id));
    let signals = stdio::forward_signals(client, id, exec_id);
    let waited = wait.await.map_err(|e| anyhow!("wait failed: {e}"))?;
    signals.abort();
    if let Some(r) = resize {
        r.abort();
    }
    attached.finish().await;
    drop(raw);
    let status = waited
        .map_err(rpc_err)
        .with_context(|| format!("cannot wait for {id}"))?
        .into_inner()
        .exit_status;
    Ok(status.min(255) as i32)
}

pub async fn exec(client: &Client, a: ExecArgs) -> Result<i32> {
    let c = get_container(client, &a.id).await?;
    let spec: serde_json::Value = c
        .spec
        .as_ref()
        .map(|s| serde_json::from_slice(&s.value))
        .transpose()
        .context("cannot parse the container's spec")?
        .ok_or_else(|| anyhow!("container {} has no spec", a.id))?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| anyhow!("container {} has no process in its spec", a.id))?;
    process["args"] = json!(a.command);
    process["terminal"] = json!(a.tty);
    if a.tty
        && let Some(env) = process["env"].as_array_mut()
        && !env
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
    {
        env.push(json!("TERM=xterm"));
    }
    let exec_id = format!("exec-{}", generate_id());
    let fifos = Fifos::new(&exec_id, a.interactive, a.tty)?;
    let (stdin, stdout, stderr) = fifos.uris();
    client
        .tasks()
        .exec(client.req(tasks::ExecProcessRequest {
            container_id: a.id.clone(),
            stdin,
            stdout,
            stderr,
            terminal: a.tty,
            spec: Some(any::pack_raw(
                any::OCI_PROCESS,
                serde_json::to_vec(&process)?,
            )),
            exec_id: exec_id.clone(),
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot exec in {}", a.id))?;
    let code = attach_start_wait(client, &fifos, &a.id, &exec_id, a.tty).await;
    let _ = client
        .tasks()
        .delete_process(client.req(tasks::DeleteProcessRequest {
            container_id: a.id.clone(),
            exec_id,
        }))
        .await;
    let code = code?;
    if code != 0 {
        return Err(ExitCode(code).into());
    }
    Ok(0)
}

fn status_name(p: &Process) -> String {
    TaskStatus::try_from(p.status)
        .map(|s| s.as_str_name().to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

/// Seconds since `pid` started, from /proc (the daemon does not report start times).
fn uptime(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let started = btime + start_ticks / hz;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(now.saturating_sub(started))
}

pub async fn ps(client: &Client, out: Output) -> Result<()> {
    let list = client
        .containers()
        .list(client.req(containers::ListContainersRequest { filters: vec![] }))
        .await
        .map_err(rpc_err)
        .context("cannot list containers")?
        .into_inner()
        .containers;
    let tasks: HashMap<String, Process> = client
        .tasks()
        .list(client.req(tasks::ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(rpc_err)
        .context("cannot list tasks")?
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| (t.container_id.clone(), t))
        .collect();
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut list = list;
    list.sort_by(|a, b| a.id.cmp(&b.id));
    for c in list {
        let t = tasks.get(&c.id);
        let status = t.map(status_name).unwrap_or_else(|| "created".into());
        let pid = t.map(|t| t.pid).filter(|p| *p > 0);
        let up = match (t, pid) {
            (Some(t), Some(p))
                if t.status == TaskStatus::Running as i32
                    || t.status == TaskStatus::Paused as i32 =>
            {
                uptime(p)
            }
            _ => None,
        };
        rows.push(vec![
            c.id.clone(),
            c.image.clone(),
            status.clone(),
            pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            up.map(output::human_duration).unwrap_or_else(|| "-".into()),
        ]);
        json.push(json!({
            "id": c.id,
            "image": c.image,
            "status": status,
            "pid": pid,
            "uptime_seconds": up,
            "exit_status": t.filter(|t| t.status == TaskStatus::Stopped as i32).map(|t| t.exit_status),
            "runtime": c.runtime.as_ref().map(|r| r.name.clone()),
            "labels": c.labels,
        }));
    }
    output::print(
        out,
        &["ID", "IMAGE", "STATUS", "PID", "UPTIME"],
        &rows,
        json.into(),
    );
    Ok(())
}

pub async fn logs(client: &Client, a: LogsArgs, log_dir: &Path) -> Result<()> {
    use std::io::{Read, Write};
    // Errors for an unknown container, not for a missing file.
    get_container(client, &a.id).await?;
    let path = log_path(log_dir, &client.namespace, &a.id);
    let mut stdout = std::io::stdout();
    if let Ok(old) = std::fs::read(rotated(&path)) {
        stdout.write_all(&old)?;
    }
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !a.follow => {
            bail!(
                "container {} has no log file at {} (only `corral run -d` with corral's shim writes one)",
                a.id,
                path.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Following a container whose shim has not created the file yet.
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(f) = std::fs::File::open(&path) {
                    break f;
                }
                if !running(client, &a.id).await? {
                    return Ok(());
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut copy = |file: &mut std::fs::File| -> Result<usize> {
        let mut total = 0;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n])?;
            total += n;
        }
        stdout.flush()?;
        Ok(total)
    };
    copy(&mut file)?;
    if !a.follow {
        return Ok(());
    }
    // Rotated: the path names a new file; what is left of ours was copied first.
    let switch = |file: &mut std::fs::File| -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.ino() != file.metadata()?.ino() => {
                *file = std::fs::File::open(&path)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let mut last_check = Instant::now();
    loop {
        let n = copy(&mut file)?;
        if switch(&mut file)? {
            continue;
        }
        if n > 0 {
            continue;
        }
        if last_check.elapsed() >= Duration::from_millis(300) {
            last_check = Instant::now();
            if !running(client, &a.id).await? {
                // The shim reports an exit after the output is written: take the rest.
                copy(&mut file)?;
                if switch(&mut file)? {
                    copy(&mut file)?;
                }
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn running(client: &Client, id: &str) -> Result<bool> {
    Ok(get_task(client, id)
        .await?
        .is_some_and(|t| t.status != TaskStatus::Stopped as i32))
}

/// `SIGTERM`, `TERM`, `15` → 15.
pub fn parse_signal(s: &str) -> Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if n == 0 || n > 64 {
            bail!("signal {n} is out of range");
        }
        return Ok(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as u32)
        .map_err(|_| anyhow!("unknown signal {s:?}"))
}

async fn kill_task(client: &Client, id: &str, signal: u32, all: bool) -> Result<()> {
    client
        .tasks()
        .kill(client.req(tasks::KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal,
            all,
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot signal {id}"))?;
    Ok(())
}

pub async fn kill(client: &Client, a: KillArgs) -> Result<()> {
    let sig = parse_signal(&a.signal)?;
    get_container(client, &a.id).await?;
    if get_task(client, &a.id).await?.is_none() {
        bail!("container {} is not running", a.id);
    }
    kill_task(client, &a.id, sig, false).await
}

/// Waits for the task's exit for at most `limit`; true if it exited.
async fn wait_exit(client: &Client, id: &str, limit: Duration) -> Result<bool> {
    let req = client.req(tasks::WaitRequest {
        container_id: id.into(),
        exec_id: String::new(),
    });
    match tokio::time::timeout(limit, client.tasks().wait(req)).await {
        Ok(r) => {
            r.map_err(rpc_err)
                .with_context(|| format!("cannot wait for {id}"))?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

pub async fn stop(client: &Client, a: StopArgs) -> Result<()> {
    let c = get_container(client, &a.id).await?;
    let Some(t) = get_task(client, &a.id).await? else {
        bail!("container {} is not running", a.id);
    };
    if t.status == TaskStatus::Stopped as i32 {
        return Ok(());
    }
    if t.status == TaskStatus::Paused as i32 {
        // A frozen process cannot act on SIGTERM.
        let _ = pause(client, &a.id, false).await;
    }
    let sig = match c.labels.get(STOP_SIGNAL_LABEL) {
        Some(s) => parse_signal(s)?,
        None => libc::SIGTERM as u32,
    };
    kill_task(client, &a.id, sig, false).await?;
    if wait_exit(client, &a.id, Duration::from_secs(a.time)).await? {
        return Ok(());
    }
    kill_task(client, &a.id, libc::SIGKILL as u32, true).await?;
    if !wait_exit(client, &a.id, Duration::from_secs(30)).await? {
        bail!("container {} did not exit after SIGKILL", a.id);
    }
    Ok(())
}

/// Deletes the task (killing it first if `force`), the snapshot, the record and the log.
async fn remove(client: &Client, id: &str, force: bool, log_dir: &Path) -> Result<()> {
    let c = get_container(client, id).await?;
    if let Some(t) = get_task(client, id).await? {
        if t.status != TaskStatus::Stopped as i32 && t.status != TaskStatus::Created as i32 {
            if !force {
                bail!(
                    "container {id} is {}: stop it first, or use rm -f",
                    status_name(&t)
                );
            }
            if t.status == TaskStatus::Paused as i32 {
                let _ = pause(client, id, false).await;
            }
            kill_task(client, id, libc::SIGKILL as u32, true).await?;
            if !wait_exit(client, id, Duration::from_secs(30)).await? {
                bail!("container {id} did not exit after SIGKILL");
            }
        }
        match client
            .tasks()
            .delete(client.req(tasks::DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => {
                return Err(rpc_err(s)).with_context(|| format!("cannot delete the task of {id}"));
            }
        }
    }
    if !c.snapshot_key.is_empty() {
        let snapshotter = if c.snapshotter.is_empty() {
            SNAPSHOTTER.to_string()
        } else {
            c.snapshotter.clone()
        };
        match client
            .snapshots()
            .remove(client.req(snapshots::RemoveSnapshotRequest {
                snapshotter,
                key: c.snapshot_key.clone(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => {
                return Err(rpc_err(s))
                    .with_context(|| format!("cannot remove the snapshot of {id}"));
            }
        }
    }
    client
        .containers()
        .delete(client.req(containers::DeleteContainerRequest { id: id.into() }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot delete container {id}"))?;
    let log = log_path(log_dir, &client.namespace, id);
    let _ = std::fs::remove_file(rotated(&log));
    let _ = std::fs::remove_file(&log);
    Ok(())
}

pub async fn rm(client: &Client, a: RmArgs, log_dir: &Path) -> Result<()> {
    let mut failed = None;
    for id in &a.ids {
        if let Err(e) = remove(client, id, a.force, log_dir).await {
            if a.ids.len() == 1 {
                return Err(e);
            }
            eprintln!("corral: {}", format!("{e:#}").replace('\n', " "));
            failed = Some(e);
        }
    }
    match failed {
        Some(_) => Err(ExitCode(1).into()),
        None => Ok(()),
    }
}

pub async fn pause(client: &Client, id: &str, freeze: bool) -> Result<()> {
    let r = if freeze {
        client
            .tasks()
            .pause(client.req(tasks::PauseTaskRequest {
                container_id: id.into(),
            }))
            .await
    } else {
        client
            .tasks()
            .resume(client.req(tasks::ResumeTaskRequest {
                container_id: id.into(),
            }))
            .await
    };
    r.map_err(rpc_err)
        .with_context(|| format!("cannot {} {id}", if freeze { "pause" } else { "resume" }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("HUP").unwrap(), 1);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn generated_ids_are_distinct_hex() {
        let a = generate_id();
        let b = generate_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn log_paths() {
        let p = log_path(Path::new("/var/log/corral"), "default", "c1");
        assert_eq!(p, Path::new("/var/log/corral/default/c1.log"));
        assert_eq!(rotated(&p), Path::new("/var/log/corral/default/c1.log.1"));
    }
}
