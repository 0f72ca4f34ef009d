//! `corral events`, `corral snapshots ls`, `corral info`.

use anyhow::{Context, Result};
use protocol::grpc::any;
use protocol::grpc::containerd::events as ev;
use protocol::grpc::containerd::services::containers::v1 as containers;
use protocol::grpc::containerd::services::events::v1 as events;
use protocol::grpc::containerd::services::images::v1 as images;
use protocol::grpc::containerd::services::introspection::v1 as introspection;
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use protocol::grpc::prost_types::Any;
use serde_json::{Value, json};

use crate::Output;
use crate::client::{Client, SNAPSHOTTER, format_ts, rpc_err};
use crate::output;

fn ts(t: &Option<protocol::grpc::prost_types::Timestamp>) -> Value {
    json!(format_ts(t.as_ref()))
}

/// The fields of a known containerd event as JSON; unknown types give their type URL.
pub fn decode_event(a: &Any) -> Value {
    fn un<M: protocol::grpc::prost::Message + Default>(a: &Any) -> Option<M> {
        any::unpack(a, &a.type_url).ok()
    }
    let v = match a.type_url.as_str() {
        any::TASK_CREATE => un::<ev::TaskCreate>(a).map(|e| {
            json!({"container_id": e.container_id, "bundle": e.bundle, "pid": e.pid,
                   "io": e.io.map(|io| json!({"stdin": io.stdin, "stdout": io.stdout,
                                              "stderr": io.stderr, "terminal": io.terminal}))})
        }),
        any::TASK_START => un::<ev::TaskStart>(a).map(|e| json!({"container_id": e.container_id, "pid": e.pid})),
        any::TASK_DELETE => un::<ev::TaskDelete>(a).map(|e| {
            json!({"container_id": e.container_id, "id": e.id, "pid": e.pid,
                   "exit_status": e.exit_status, "exited_at": ts(&e.exited_at)})
        }),
        any::TASK_EXIT => un::<ev::TaskExit>(a).map(|e| {
            json!({"container_id": e.container_id, "id": e.id, "pid": e.pid,
                   "exit_status": e.exit_status, "exited_at": ts(&e.exited_at)})
        }),
        any::TASK_OOM => un::<ev::TaskOom>(a).map(|e| json!({"container_id": e.container_id})),
        any::TASK_EXEC_ADDED => un::<ev::TaskExecAdded>(a).map(|e| json!({"container_id": e.container_id, "exec_id": e.exec_id})),
        any::TASK_EXEC_STARTED => un::<ev::TaskExecStarted>(a)
            .map(|e| json!({"container_id": e.container_id, "exec_id": e.exec_id, "pid": e.pid})),
        any::TASK_PAUSED => un::<ev::TaskPaused>(a).map(|e| json!({"container_id": e.container_id})),
        any::TASK_RESUMED => un::<ev::TaskResumed>(a).map(|e| json!({"container_id": e.container_id})),
        any::TASK_CHECKPOINTED => un::<ev::TaskCheckpointed>(a)
            .map(|e| json!({"container_id": e.container_id, "checkpoint": e.checkpoint})),
        any::CONTAINER_CREATE => un::<ev::ContainerCreate>(a).map(|e| {
            json!({"id": e.id, "image": e.image, "runtime": e.runtime.map(|r| r.name)})
        }),
        any::CONTAINER_UPDATE => un::<ev::ContainerUpdate>(a).map(|e| {
            json!({"id": e.id, "image": e.image, "labels": e.labels, "snapshot_key": e.snapshot_key})
        }),
        any::CONTAINER_DELETE => un::<ev::ContainerDelete>(a).map(|e| json!({"id": e.id})),
        any::CONTENT_DELETE => un::<ev::ContentDelete>(a).map(|e| json!({"digest": e.digest})),
        any::NAMESPACE_CREATE => un::<ev::NamespaceCreate>(a).map(|e| json!({"name": e.name, "labels": e.labels})),
        any::NAMESPACE_UPDATE => un::<ev::NamespaceUpdate>(a).map(|e| json!({"name": e.name, "labels": e.labels})),
        any::NAMESPACE_DELETE => un::<ev::NamespaceDelete>(a).map(|e| json!({"name": e.name})),
        any::SNAPSHOT_PREPARE => un::<ev::SnapshotPrepare>(a).map(|e| json!({"key": e.key, "parent": e.parent})),
        any::SNAPSHOT_COMMIT => un::<ev::SnapshotCommit>(a).map(|e| json!({"key": e.key, "name": e.name})),
        any::SNAPSHOT_REMOVE => un::<ev::SnapshotRemove>(a).map(|e| json!({"key": e.key})),
        any::IMAGE_CREATE => un::<images::ImageCreate>(a).map(|e| json!({"name": e.name, "labels": e.labels})),
        any::IMAGE_UPDATE => un::<images::ImageUpdate>(a).map(|e| json!({"name": e.name, "labels": e.labels})),
        any::IMAGE_DELETE => un::<images::ImageDelete>(a).map(|e| json!({"name": e.name})),
        _ => None,
    };
    v.unwrap_or_else(|| json!({"type_url": a.type_url, "bytes": a.value.len()}))
}

pub async fn events(client: &Client, out: Output) -> Result<()> {
    let mut stream = client
        .events()
        .subscribe(client.req(events::SubscribeRequest { filters: vec![] }))
        .await
        .map_err(rpc_err)
        .context("cannot subscribe to events")?
        .into_inner();
    use std::io::Write;
    while let Some(e) = stream
        .message()
        .await
        .map_err(rpc_err)
        .context("event stream failed")?
    {
        let body = e.event.as_ref().map(decode_event).unwrap_or(Value::Null);
        let when = format_ts(e.timestamp.as_ref());
        let line = match out {
            Output::Json => json!({"timestamp": when, "namespace": e.namespace, "topic": e.topic,
                                   "type": e.event.as_ref().map(|a| a.type_url.clone()), "event": body})
            .to_string(),
            Output::Table => format!("{when} {} {} {body}", e.namespace, e.topic),
        };
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}")?;
        o.flush()?;
    }
    Ok(())
}

pub async fn snapshots(client: &Client, out: Output) -> Result<()> {
    let mut stream = client
        .snapshots()
        .list(client.req(snapshots::ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: vec![],
        }))
        .await
        .map_err(rpc_err)
        .context("cannot list snapshots")?
        .into_inner();
    let mut all = Vec::new();
    while let Some(r) = stream
        .message()
        .await
        .map_err(rpc_err)
        .context("cannot list snapshots")?
    {
        all.extend(r.info);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let kind = |k: i32| {
        snapshots::Kind::try_from(k)
            .map(|k| k.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into())
    };
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| vec![s.name.clone(), s.parent.clone(), kind(s.kind)])
        .collect();
    let js: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({"key": s.name, "parent": s.parent, "kind": kind(s.kind), "labels": s.labels,
                   "created_at": ts(&s.created_at)})
        })
        .collect();
    output::print(out, &["KEY", "PARENT", "KIND"], &rows, js.into());
    Ok(())
}

pub async fn info(client: &Client, out: Output) -> Result<()> {
    let v = client
        .version()
        .version(client.req(()))
        .await
        .map_err(rpc_err)
        .context("cannot get the daemon's version")?
        .into_inner();
    let uuid = client
        .introspection()
        .server(client.req(()))
        .await
        .map_err(rpc_err)
        .context("cannot get the daemon's identity")?
        .into_inner()
        .uuid;
    let plugins = client
        .introspection()
        .plugins(client.req(introspection::PluginsRequest { filters: vec![] }))
        .await
        .map_err(rpc_err)
        .context("cannot list the daemon's plugins")?
        .into_inner()
        .plugins;
    let of_type = |prefix: &str| -> Vec<String> {
        plugins
            .iter()
            .filter(|p| p.r#type.starts_with(prefix))
            .map(|p| format!("{}.{}", p.r#type, p.id))
            .collect()
    };
    let runtimes = of_type("io.containerd.runtime");
    let runtime_export = |key: &str| {
        plugins
            .iter()
            .find(|p| p.r#type == "io.containerd.runtime.v2")
            .and_then(|p| p.exports.get(key).cloned())
    };
    let root = runtime_export("root");
    let default_runtime = runtime_export("default");
    let snapshotters: Vec<String> = plugins
        .iter()
        .filter(|p| p.r#type == "io.containerd.snapshotter.v1")
        .map(|p| p.id.clone())
        .collect();
    let images = client
        .images()
        .list(client.req(images::ListImagesRequest { filters: vec![] }))
        .await
        .map_err(rpc_err)
        .context("cannot count images")?
        .into_inner()
        .images
        .len();
    let containers = client
        .containers()
        .list(client.req(containers::ListContainersRequest { filters: vec![] }))
        .await
        .map_err(rpc_err)
        .context("cannot count containers")?
        .into_inner()
        .containers
        .len();
    let tasks = client
        .tasks()
        .list(client.req(tasks::ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(rpc_err)
        .context("cannot count tasks")?
        .into_inner()
        .tasks;
    let running = tasks
        .iter()
        .filter(|t| t.status == protocol::grpc::containerd::v1::types::Status::Running as i32)
        .count();
    let address = client.address.display().to_string();
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "version": v.version, "revision": v.revision, "uuid": uuid,
                "address": address, "root": root,
                "default_runtime": default_runtime,
                "namespace": client.namespace,
                "runtime_plugins": runtimes, "snapshotters": snapshotters,
                "images": images, "containers": containers,
                "tasks": tasks.len(), "tasks_running": running,
            }))?
        ),
        Output::Table => {
            println!("Version:      {} ({})", v.version, v.revision);
            println!("UUID:         {uuid}");
            println!("Address:      {address}");
            println!(
                "Root:         {}",
                root.as_deref().unwrap_or("(not reported by the daemon)")
            );
            println!("Runtimes:     {}", runtimes.join(", "));
            if let Some(d) = &default_runtime {
                println!("Default:      {d}");
            }
            println!("Snapshotters: {}", snapshotters.join(", "));
            println!("Namespace:    {}", client.namespace);
            println!("Images:       {images}");
            println!("Containers:   {containers}");
            println!("Tasks:        {} ({running} running)", tasks.len());
        }
    }
    Ok(())
}
