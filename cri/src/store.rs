//! corral-cri's view of its pods and containers: a cache of the records in corrald plus what
//! the tasks say (running or not, pid), rebuilt from corrald at start-up and kept current by
//! our own calls and corrald's exit events.
//!
//! The lock is a plain mutex held only to read or change the maps: never across a call to
//! corrald, a mount or a CNI plugin. Operations that must not overlap on one object (two
//! starts, a start and a remove) claim it with a [`Busy`] guard instead, which the other
//! caller sees as FailedPrecondition at once rather than waiting behind a lock.
//!
//! Names: kubelet derives a unique name from each pod's and container's metadata and relies
//! on the runtime to refuse a second object with the same name (it retries a create whose
//! answer it lost, and must not get two pods). [`Store::reserve_name`] holds a name for an id
//! from the start of a create until the object is removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::grpc::corral::cri::v1::{ContainerRecord, ContainerStatusRecord, SandboxRecord};

use crate::error::{Error, Result};

/// A pod sandbox as we know it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub record: Arc<SandboxRecord>,
    /// The pause process runs.
    pub ready: bool,
    /// The pause process's pid in the host's pid namespace (0 when not running).
    pub pid: u32,
    /// StopPodSandbox finished: network torn down, containers stopped.
    pub stopped: bool,
}

/// The CRI state of a container, derived from its status record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
}

/// A container as we know it.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub record: Arc<ContainerRecord>,
    pub status: ContainerStatusRecord,
    /// The init process's pid while it runs.
    pub pid: u32,
}

impl Container {
    pub fn state(&self) -> State {
        if self.status.exited {
            State::Exited
        } else if self.status.started_at != 0 {
            State::Running
        } else {
            State::Created
        }
    }

    pub fn sandbox_id(&self) -> &str {
        &self.record.sandbox_id
    }
}

#[derive(Default)]
struct Inner {
    sandboxes: BTreeMap<String, Sandbox>,
    containers: BTreeMap<String, Container>,
    /// Reserved name → the id holding it.
    names: HashMap<String, String>,
    /// Ids with an operation in progress, and which.
    busy: HashMap<String, &'static str>,
    /// Per container, the lock its status writes to corrald take (see [`Store::status_lock`]).
    status_writes: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

/// Holds an id busy until dropped.
pub struct Busy<'a> {
    store: &'a Store,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.store.lock().busy.remove(&self.id);
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every change is a single
        // insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `name` for `id`. Reserving the same name for the same id again is fine.
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<()> {
        let mut g = self.lock();
        match g.names.get(name) {
            Some(holder) if holder != id => Err(Error::new(
                protocol::Code::AlreadyExists,
                format!("name {name:?} is reserved for {holder:?}"),
            )),
            _ => {
                g.names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    /// Gives up `name` if `id` holds it.
    pub fn release_name(&self, name: &str, id: &str) {
        let mut g = self.lock();
        if g.names.get(name).is_some_and(|h| h == id) {
            g.names.remove(name);
        }
    }

    /// Marks `id` busy with `op`; FailedPrecondition naming the other operation if it already is.
    pub fn claim(&self, id: &str, op: &'static str) -> Result<Busy<'_>> {
        let mut g = self.lock();
        if let Some(other) = g.busy.get(id) {
            return Err(Error::precondition(format!(
                "{id}: cannot {op} while another call is trying to {other} it"
            )));
        }
        g.busy.insert(id.to_string(), op);
        Ok(Busy {
            store: self,
            id: id.to_string(),
        })
    }

    pub fn put_sandbox(&self, s: Sandbox) {
        let mut g = self.lock();
        g.names.insert(s.name.clone(), s.id.clone());
        g.sandboxes.insert(s.id.clone(), s);
    }

    pub fn put_container(&self, c: Container) {
        let mut g = self.lock();
        g.names.insert(c.name.clone(), c.id.clone());
        g.containers.insert(c.id.clone(), c);
    }

    /// Removes a sandbox and frees its name.
    pub fn remove_sandbox(&self, id: &str) {
        let mut g = self.lock();
        if let Some(s) = g.sandboxes.remove(id)
            && g.names.get(&s.name).is_some_and(|h| h == id)
        {
            g.names.remove(&s.name);
        }
    }

    /// Removes a container and frees its name.
    pub fn remove_container(&self, id: &str) {
        let mut g = self.lock();
        g.status_writes.remove(id);
        if let Some(c) = g.containers.remove(id)
            && g.names.get(&c.name).is_some_and(|h| h == id)
        {
            g.names.remove(&c.name);
        }
    }

    pub fn sandbox(&self, id: &str) -> Option<Sandbox> {
        self.lock().sandboxes.get(id).cloned()
    }

    pub fn container(&self, id: &str) -> Option<Container> {
        self.lock().containers.get(id).cloned()
    }

    /// The sandbox whose id is `id` or starts with it (crictl passes short ids).
    pub fn find_sandbox(&self, id: &str) -> Result<Sandbox> {
        let g = self.lock();
        find(&g.sandboxes, id, "pod sandbox").cloned()
    }

    /// The container whose id is `id` or starts with it.
    pub fn find_container(&self, id: &str) -> Result<Container> {
        let g = self.lock();
        find(&g.containers, id, "container").cloned()
    }

    pub fn sandboxes(&self) -> Vec<Sandbox> {
        self.lock().sandboxes.values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<Container> {
        self.lock().containers.values().cloned().collect()
    }

    /// The containers a CRI list filter selects by id and pod id (each a prefix, empty: any).
    pub fn containers_matching(&self, id: &str, sandbox_id: &str) -> Vec<Container> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.id.starts_with(id) && c.sandbox_id().starts_with(sandbox_id))
            .cloned()
            .collect()
    }

    /// The containers of one sandbox.
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<Container> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.sandbox_id() == sandbox_id)
            .cloned()
            .collect()
    }

    /// Changes a pod in place and returns the result; None if it is gone.
    pub fn update_sandbox<T>(&self, id: &str, f: impl FnOnce(&mut Sandbox) -> T) -> Option<T> {
        self.lock().sandboxes.get_mut(id).map(f)
    }

    /// The lock a write of container `id`'s status to corrald holds while it reads the status
    /// from the view and sends it. Writes then land in corrald in the order they read the
    /// view, so the last one to land carries the view's latest status, whichever of them was
    /// started first. None once the container is gone (its lock went with it).
    pub fn status_lock(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut g = self.lock();
        if !g.containers.contains_key(id) {
            return None;
        }
        Some(g.status_writes.entry(id.to_string()).or_default().clone())
    }

    /// Changes a container in place and returns the result; None if it is gone.
    pub fn update_container<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> T) -> Option<T> {
        self.lock().containers.get_mut(id).map(f)
    }
}

fn find<'a, T>(map: &'a BTreeMap<String, T>, id: &str, what: &str) -> Result<&'a T> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} id is empty")));
    }
    if let Some(v) = map.get(id) {
        return Ok(v);
    }
    let mut matches = map
        .range(id.to_string()..)
        .take_while(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, v)), None) => Ok(v),
        (Some(_), Some(_)) => Err(Error::invalid(format!(
            "{what} id prefix {id:?} is ambiguous"
        ))),
        (None, _) => Err(Error::not_found(format!("{what} {id:?} not found"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, name: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            name: name.into(),
            record: Default::default(),
            ready: true,
            pid: 1,
            stopped: false,
        }
    }

    #[test]
    fn names_are_exclusive_until_released() {
        let s = Store::default();
        s.reserve_name("web_default_u1_0", "a").unwrap();
        s.reserve_name("web_default_u1_0", "a").unwrap();
        let e = s.reserve_name("web_default_u1_0", "b").unwrap_err();
        assert_eq!(e.code, protocol::Code::AlreadyExists);
        assert!(e.message.contains("\"a\""), "{e}");
        s.release_name("web_default_u1_0", "b");
        assert!(
            s.reserve_name("web_default_u1_0", "b").is_err(),
            "b never held it"
        );
        s.release_name("web_default_u1_0", "a");
        s.reserve_name("web_default_u1_0", "b").unwrap();

        s.put_sandbox(sandbox("p1", "x"));
        assert!(s.reserve_name("x", "p2").is_err());
        s.remove_sandbox("p1");
        s.reserve_name("x", "p2").unwrap();
    }

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let s = Store::default();
        s.put_sandbox(sandbox("abc123", "n1"));
        s.put_sandbox(sandbox("abd456", "n2"));
        assert_eq!(s.find_sandbox("abc123").unwrap().id, "abc123");
        assert_eq!(s.find_sandbox("abc").unwrap().id, "abc123");
        assert_eq!(
            s.find_sandbox("ab").unwrap_err().code,
            protocol::Code::InvalidArgument
        );
        assert!(s.find_sandbox("zz").unwrap_err().is_not_found());
        assert_eq!(
            s.find_sandbox("").unwrap_err().code,
            protocol::Code::InvalidArgument
        );
    }

    #[test]
    fn busy_claims_exclude_each_other_until_dropped() {
        let s = Store::default();
        let g = s.claim("c1", "start").unwrap();
        let e = s.claim("c1", "remove").err().unwrap();
        assert!(
            e.message.contains("start") && e.message.contains("remove"),
            "{e}"
        );
        s.claim("c2", "remove").unwrap();
        drop(g);
        s.claim("c1", "remove").unwrap();
    }
}
