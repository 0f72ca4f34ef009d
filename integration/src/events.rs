//! Watching containerd's event stream through `ctr events`.
//!
//! `ctr events` prints one line per event: `<timestamp> <namespace> <topic> <event as JSON>`, where
//! the timestamp is Go's `time.Time` string and so contains spaces
//! (`2026-11-27 20:02:16.911313845 +0000 UTC probe /tasks/start {"container_id":"d1","pid":7656}`).
//! The topic is the first token that starts with `/`.
//!
//! [`EventStream::start`] returns only once the subscription is live: it changes a label of the
//! test's namespace (which makes containerd publish `/namespaces/update`) until that event shows up,
//! so no event of the test itself can be missed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Containerd, Ctr};

/// One event as printed by `ctr events`.
#[derive(Clone, Debug)]
pub struct Event {
    pub timestamp: String,
    pub namespace: String,
    pub topic: String,
    /// The event body; `Null` if ctr printed none.
    pub payload: serde_json::Value,
}

impl Event {
    /// `container_id` of task events (or `id` of container events).
    pub fn container_id(&self) -> Option<&str> {
        self.payload
            .get("container_id")
            .or_else(|| self.payload.get("id"))
            .and_then(|v| v.as_str())
    }

    /// A numeric field of the payload; protobuf's JSON omits zero values, so absent means 0.
    pub fn u64_field(&self, name: &str) -> u64 {
        self.payload.get(name).and_then(|v| v.as_u64()).unwrap_or(0)
    }
}

/// Parses one line of `ctr events` output.
pub fn parse_event_line(line: &str) -> Option<Event> {
    let tokens: Vec<&str> = line.trim_end().split(' ').collect();
    let k = (1..tokens.len()).find(|&k| tokens[k].starts_with('/'))?;
    let rest = tokens[k + 1..].join(" ");
    let payload = if rest.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&rest).ok()?
    };
    Some(Event {
        timestamp: tokens[..k - 1].join(" "),
        namespace: tokens[k - 1].to_string(),
        topic: tokens[k].to_string(),
        payload,
    })
}

type Shared = Arc<(Mutex<Vec<Event>>, Condvar)>;

/// A running `ctr events` whose output is collected in the background; killed on drop.
pub struct EventStream {
    child: Child,
    shared: Shared,
    reader: Option<JoinHandle<()>>,
}

impl EventStream {
    /// Starts `ctr events [filters]` through `ctr` and collects what it prints. The subscription
    /// may not be live yet when this returns: callers wait for a marker event of their own.
    pub fn spawn(ctr: &Ctr, filters: &[&str]) -> EventStream {
        let mut args = vec!["events"];
        args.extend_from_slice(filters);
        let mut cmd = ctr.command(&args);
        // ctr prints timestamps in local time; pin it so tests can compare them.
        cmd.env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("cannot start `ctr events`");
        let stdout = child.stdout.take().unwrap();
        let shared: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = shared.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ev) = parse_event_line(&line) {
                    let (lock, cv) = &*sink;
                    lock.lock().unwrap().push(ev);
                    cv.notify_all();
                }
            }
        });
        EventStream {
            child,
            shared,
            reader: Some(reader),
        }
    }

    /// Subscribes to `ctrd`'s events and returns once the subscription is known to be live.
    pub fn start(ctrd: &Containerd) -> EventStream {
        let ctr = ctrd.ctr();
        let stream = Self::spawn(ctr, &[]);

        let ns = ctrd.namespace().to_string();
        for attempt in 0..40 {
            let marker = format!("{attempt}");
            ctr.ok(&[
                "namespaces",
                "label",
                &ns,
                &format!("corral.test/events-marker={marker}"),
            ]);
            let seen = stream.try_wait_for(Duration::from_millis(500), |evs| {
                evs.iter()
                    .any(|e| {
                        e.topic == "/namespaces/update"
                            && e.payload["labels"]["corral.test/events-marker"] == marker.as_str()
                    })
                    .then_some(())
            });
            if seen.is_some() {
                return stream;
            }
        }
        panic!("`ctr events` did not deliver a /namespaces/update marker event within 20 s");
    }

    /// Snapshot of the events received so far, in arrival order.
    pub fn events(&self) -> Vec<Event> {
        self.shared.0.lock().unwrap().clone()
    }

    /// Waits until `f` returns `Some` for the events received so far; panics naming `what` on
    /// timeout (printing the events seen).
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut(&[Event]) -> Option<T>,
    ) -> T {
        match self.try_wait_for(timeout, f) {
            Some(v) => v,
            None => {
                let evs = self.events();
                let lines: Vec<String> = evs
                    .iter()
                    .map(|e| format!("{} {} {}", e.namespace, e.topic, e.payload))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; events so far:\n{}",
                    lines.join("\n")
                )
            }
        }
    }

    /// Waits for an event of `topic` about container `id` (see [`Event::container_id`]);
    /// panics on timeout, printing the events seen.
    pub fn wait_for_task_event(&self, topic: &str, id: &str, timeout: Duration) {
        self.wait_for(&format!("{topic} of {id}"), timeout, |evs| {
            evs.iter()
                .any(|e| e.topic == topic && e.container_id() == Some(id))
                .then_some(())
        })
    }

    /// Like [`EventStream::wait_for`] but `None` on timeout.
    pub fn try_wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[Event]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut evs = lock.lock().unwrap();
        loop {
            if let Some(v) = f(&evs) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            evs = cv.wait_timeout(evs, deadline - now).unwrap().0;
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_events_lines() {
        let line = "2026-11-27 20:02:17.009766924 +0000 UTC probe /tasks/start {\"container_id\":\"d1\",\"pid\":7656}";
        let ev = parse_event_line(line).unwrap();
        assert_eq!(ev.timestamp, "2026-11-27 20:02:17.009766924 +0000 UTC");
        assert_eq!(ev.namespace, "probe");
        assert_eq!(ev.topic, "/tasks/start");
        assert_eq!(ev.container_id(), Some("d1"));
        assert_eq!(ev.u64_field("pid"), 7656);
        assert_eq!(ev.u64_field("exit_status"), 0);

        let ev = parse_event_line("2026-11-27 20:02:17 +0000 UTC ns /snapshot/remove").unwrap();
        assert_eq!(ev.topic, "/snapshot/remove");
        assert!(ev.payload.is_null());

        assert!(parse_event_line("time=\"…\" level=error msg=oops").is_none());
    }
}
