//! Pull progress: one bar per blob (bytes, speed, ETA) redrawn in place on a terminal; plain
//! lines, one per change of a blob's state, otherwise (logs, pipes, tests).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use protocol::grpc::corral::services::transfer::v1::{BlobKind, BlobProgress, BlobState};

use crate::output::human_size;

struct Row {
    p: BlobProgress,
    /// When bytes started flowing, and the offset then (a resumed download starts above 0).
    started: Option<(Instant, i64)>,
    finished: Option<Instant>,
}

pub struct Progress {
    tty: bool,
    to_stderr: bool,
    rows: Vec<Row>,
    by_digest: HashMap<String, usize>,
    drawn: usize,
    last_draw: Option<Instant>,
}

pub fn kind_name(k: i32) -> &'static str {
    match BlobKind::try_from(k) {
        Ok(BlobKind::Index) => "index",
        Ok(BlobKind::Manifest) => "manifest",
        Ok(BlobKind::Config) => "config",
        Ok(BlobKind::Layer) => "layer",
        _ => "blob",
    }
}

pub fn state_name(s: i32) -> &'static str {
    match BlobState::try_from(s) {
        Ok(BlobState::Waiting) => "waiting",
        Ok(BlobState::Downloading) => "downloading",
        Ok(BlobState::Downloaded) => "downloaded",
        Ok(BlobState::Unpacking) => "unpacking",
        Ok(BlobState::Unpacked) => "unpacked",
        Ok(BlobState::Exists) => "exists",
        Ok(BlobState::Done) => "done",
        _ => "unknown",
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `[=====>    ]` of `width` cells.
pub fn bar(done: i64, total: i64, width: usize) -> String {
    let filled = if total <= 0 {
        0
    } else {
        ((done.clamp(0, total) as f64 / total as f64) * width as f64) as usize
    };
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    for i in 0..width {
        s.push(if i < filled {
            '='
        } else if i == filled && filled < width && done > 0 && total > 0 {
            '>'
        } else {
            ' '
        });
    }
    s.push(']');
    s
}

/// Bytes per second and the seconds left, from what flowed since `started`.
pub fn rate_eta(
    started: Option<(Instant, i64)>,
    now: Instant,
    offset: i64,
    total: i64,
) -> (f64, Option<u64>) {
    let Some((t0, o0)) = started else {
        return (0.0, None);
    };
    let secs = now.duration_since(t0).as_secs_f64();
    if secs < 0.05 {
        return (0.0, None);
    }
    let rate = (offset - o0).max(0) as f64 / secs;
    let eta =
        (rate > 0.0 && total > offset).then(|| ((total - offset) as f64 / rate).ceil() as u64);
    (rate, eta)
}

impl Progress {
    pub fn new(tty: bool, to_stderr: bool) -> Progress {
        Progress {
            tty,
            to_stderr,
            rows: Vec::new(),
            by_digest: HashMap::new(),
            drawn: 0,
            last_draw: None,
        }
    }

    pub fn update(&mut self, p: BlobProgress) {
        let now = Instant::now();
        let downloading = p.state == BlobState::Downloading as i32;
        let (i, changed) = match self.by_digest.get(&p.digest) {
            Some(&i) => (i, self.rows[i].p.state != p.state),
            None => {
                self.rows.push(Row {
                    p: p.clone(),
                    started: None,
                    finished: None,
                });
                self.by_digest.insert(p.digest.clone(), self.rows.len() - 1);
                (self.rows.len() - 1, true)
            }
        };
        let row = &mut self.rows[i];
        if downloading && row.started.is_none() {
            row.started = Some((now, p.offset));
        }
        if !downloading && row.started.is_some() && row.finished.is_none() {
            row.finished = Some(now);
        }
        row.p = p;
        if self.tty {
            let due = self
                .last_draw
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
            if changed || due {
                self.draw(now);
            }
        } else if changed {
            let p = &self.rows[i].p;
            let line = format!(
                "{} {} {} {}\n",
                kind_name(p.kind),
                p.digest,
                state_name(p.state),
                human_size(p.total)
            );
            self.emit(line.as_bytes());
        }
    }

    fn line(row: &Row, now: Instant) -> String {
        let p = &row.p;
        let name = format!("{:<8} {}", kind_name(p.kind), short(&p.digest));
        let state = state_name(p.state);
        if p.state == BlobState::Downloading as i32 {
            let (rate, eta) = rate_eta(row.started, now, p.offset, p.total);
            format!(
                "{name} {} {:>10} / {:<10} {:>10}/s  ETA {}",
                bar(p.offset, p.total, 30),
                human_size(p.offset),
                human_size(p.total),
                human_size(rate as i64),
                eta.map(|s| format!("{s}s")).unwrap_or_else(|| "-".into())
            )
        } else {
            format!("{name} {state:<12} {}", human_size(p.total))
        }
    }

    fn emit(&self, data: &[u8]) {
        if self.to_stderr {
            let mut o = std::io::stderr().lock();
            let _ = o.write_all(data);
            let _ = o.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(data);
            let _ = o.flush();
        }
    }

    fn draw(&mut self, now: Instant) {
        let mut text = String::new();
        if self.drawn > 0 {
            text.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for r in &self.rows {
            text.push_str(&format!("\x1b[2K{}\n", Self::line(r, now)));
        }
        self.emit(text.as_bytes());
        self.drawn = self.rows.len();
        self.last_draw = Some(now);
    }

    /// Draws the final state (terminal) once more.
    pub fn finish(&mut self) {
        if self.tty {
            self.draw(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(0, 100, 10), "[          ]");
        assert_eq!(bar(50, 100, 10), "[=====>    ]");
        assert_eq!(bar(100, 100, 10), "[==========]");
        assert_eq!(bar(5, 0, 4), "[    ]");
    }

    #[test]
    fn rate_and_eta() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(2);
        let (rate, eta) = rate_eta(Some((t0, 100)), now, 2100, 10_100);
        assert_eq!(rate as i64, 1000);
        assert_eq!(eta, Some(8));
        assert_eq!(rate_eta(None, now, 1, 2), (0.0, None));
    }
}
