//! Exits and OOM kills, learned from corrald: a subscription to its `/tasks/exit` and
//! `/tasks/oom` events in our namespace (and to its `/images/*` events, which only tell
//! [`crate::image`] that its kept list is out of date), and after every (re)subscription a reconciliation
//! against the tasks corrald lists, so an exit that happened while corrald or we were down, or
//! while the stream was broken, is found by asking rather than by trusting events.
//!
//! ```text
//!  loop: subscribe ──▶ reconcile (Tasks.List vs the view) ──▶ events until the stream ends
//!          ▲                                                          │
//!          └──────────────── back off (100 ms … 2 s) ◀────────────────┘
//! ```

use std::sync::Arc;
use std::time::Duration;

use protocol::grpc::any;
use protocol::grpc::containerd::events::{TaskExit, TaskOom};
use protocol::grpc::containerd::services::events::v1::SubscribeRequest;
use protocol::grpc::containerd::v1::types::Process;
use protocol::grpc::runtime::v1::ContainerEventType;

use crate::core::Cri;
use crate::corrald::{Exit, nanos, now_nanos};
use crate::error::Result;
use crate::store::State;

/// containerd.v1.types.Status.
pub const TASK_CREATED: i32 = 1;
pub const TASK_RUNNING: i32 = 2;
pub const TASK_STOPPED: i32 = 3;
pub const TASK_PAUSED: i32 = 4;

/// What a container reports when its task vanished with its exit (containerd's
/// `unknownExitCode`).
pub const UNKNOWN_EXIT: u32 = 255;

/// Runs forever: keeps the view in step with the tasks' exits.
pub async fn run(cri: Arc<Cri>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow(&cri).await {
            Ok(()) => log::warn!("corrald's event stream ended; subscribing again"),
            Err(e) => log::warn!("events from corrald: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow(cri: &Cri) -> Result<()> {
    let ns = &cri.cfg.namespace;
    let filters = [
        "/tasks/exit",
        "/tasks/oom",
        "/images/create",
        "/images/update",
        "/images/delete",
    ]
    .iter()
    .map(|t| format!("namespace=={ns:?},topic=={t:?}"))
    .collect();
    let mut stream = cri
        .corrald
        .client()
        .events()
        .subscribe(cri.corrald.client().req(SubscribeRequest { filters }))
        .await?
        .into_inner();
    // From here until the stream ends, image changes reach us (see `crate::image`).
    let _following = Following::start(cri);
    // Subscribed first, then asked: an exit is either in the list or in the stream.
    reconcile(cri).await?;
    while let Some(envelope) = stream.message().await? {
        if envelope.topic.starts_with("/images/") {
            cri.images.changed();
            continue;
        }
        let Some(event) = envelope.event else {
            continue;
        };
        if let Ok(exit) = any::unpack::<TaskExit>(&event, any::TASK_EXIT) {
            // Exits of exec processes (ExecSync) are not the container's.
            if exit.id != exit.container_id && !exit.id.is_empty() {
                continue;
            }
            let e = Exit {
                status: exit.exit_status,
                at: nanos(exit.exited_at.as_ref()),
            };
            if let Err(err) = on_exit(cri, &exit.container_id, e).await {
                log::warn!("exit of {}: {err}", exit.container_id);
            }
        } else if let Ok(oom) = any::unpack::<TaskOom>(&event, any::TASK_OOM)
            && cri.store.container(&oom.container_id).is_some()
        {
            cri.events.mark_oom(&oom.container_id);
        }
    }
    Ok(())
}

/// While alive, corrald's image events reach [`crate::image::Images`]; its drop, when the
/// stream ends or fails, says they no longer do.
struct Following<'a>(&'a Cri);

impl<'a> Following<'a> {
    fn start(cri: &'a Cri) -> Following<'a> {
        cri.images.following_events(true);
        Following(cri)
    }
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.0.images.following_events(false);
    }
}

async fn on_exit(cri: &Cri, id: &str, exit: Exit) -> Result<()> {
    if cri.store.container(id).is_some() {
        cri.record_exit(id, exit).await?;
    } else if cri.store.sandbox(id).is_some() {
        sandbox_exited(cri, id).await?;
    }
    Ok(())
}

/// The pause process is gone: the pod is NOTREADY (kubelet then stops and recreates it); its
/// task is deleted so it holds no shim.
async fn sandbox_exited(cri: &Cri, id: &str) -> Result<()> {
    let was_ready = cri.store.update_sandbox(id, |s| {
        let was = s.ready;
        s.ready = false;
        s.pid = 0;
        was
    });
    cri.corrald.delete_task(id).await?;
    if was_ready == Some(true) {
        cri.emit_sandbox(id, ContainerEventType::ContainerStoppedEvent);
    }
    Ok(())
}

/// Compares the view with corrald's tasks and records what changed unseen.
pub async fn reconcile(cri: &Cri) -> Result<()> {
    let tasks = cri.corrald.list_tasks().await?;
    let task = |id: &str| -> Option<&Process> { tasks.iter().find(|t| t.container_id == id) };
    for c in cri.store.containers() {
        if c.state() != State::Running {
            continue;
        }
        match task(&c.id) {
            Some(t) if t.status == TASK_STOPPED => {
                let exit = Exit {
                    status: t.exit_status,
                    at: nanos(t.exited_at.as_ref()),
                };
                cri.record_exit(&c.id, exit).await?;
            }
            Some(_) => {}
            None => {
                cri.record_exit(
                    &c.id,
                    Exit {
                        status: UNKNOWN_EXIT,
                        at: now_nanos(),
                    },
                )
                .await?;
            }
        }
    }
    for s in cri.store.sandboxes() {
        if !s.ready {
            continue;
        }
        let alive =
            task(&s.id).is_some_and(|t| t.status == TASK_RUNNING || t.status == TASK_PAUSED);
        if !alive {
            sandbox_exited(cri, &s.id).await?;
        }
    }
    Ok(())
}
