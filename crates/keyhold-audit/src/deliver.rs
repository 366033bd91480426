//! Delivery: one task per (tenant, sink) reads the tenant's spooled stream from its cursor and
//! sends it in batches, at least once, in order.
//!
//! - Only records synced to disk are sent ([`Spool::synced`]).
//! - Records just synced come from memory (the spool's [`Feed`]), the rest (a backlog, after a
//!   failure or a restart) from the files; either way in order and without a gap.
//! - The cursor (`DIR/cursors/<sink>/<tenant file>.cursor`: the last delivered `seq` and the
//!   byte offset after it) moves only after the sink took the batch, and is written at most
//!   every [`CURSOR_STORE_INTERVAL`] (when delivery goes idle: at once, or when that interval
//!   since the last write is over), so a crash or restart sends again at most that much more
//!   than was in flight; receivers deduplicate by event id.
//! - A failed batch is sent again after a backoff (doubling, with jitter, up to
//!   [`DeliveryOptions::retry_max`]); each sink has its own task, so a slow or dead SIEM delays
//!   only its own stream, never requests or other sinks.
//! - Progress is registered with the spool, which computes each tenant's backlog for the
//!   spool-full policy.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sink::{Outgoing, Sink, SinkError};
use crate::spool::{Feed, Spool, SpoolError, lock, tenant_file};

/// Under load, how often a sink's cursor file is rewritten. Each time is a write and a rename
/// over the old file, which ext4 follows with a flush of the new file's data (~1 ms here):
/// once per batch that was a visible share of the proxy's time.
pub const CURSOR_STORE_INTERVAL: Duration = Duration::from_secs(1);

/// One stream to deliver: a tenant's records to one sink.
pub struct Target {
    /// The tenant.
    pub tenant: String,
    /// The sink's name (unique per tenant; names its cursor directory).
    pub name: String,
    /// The sink.
    pub sink: Box<dyn Sink>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("tenant", &self.tenant).field("name", &self.name).finish()
    }
}

/// How delivery retries.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOptions {
    /// First wait after a failed batch.
    pub retry_min: Duration,
    /// Longest wait between tries.
    pub retry_max: Duration,
    /// Most often a cursor file is rewritten ([`CURSOR_STORE_INTERVAL`] by default).
    pub cursor_interval: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            cursor_interval: CURSOR_STORE_INTERVAL,
        }
    }
}

/// What one delivery task reports (for metrics and tests).
#[derive(Debug, Default)]
pub struct TargetStatus {
    /// The tenant.
    pub tenant: String,
    /// The sink's name.
    pub name: String,
    /// The last `seq` the sink acknowledged, as stored in its cursor (what a restart resumes
    /// after; segments are deleted only up to it).
    pub delivered: Arc<AtomicU64>,
    /// Records delivered straight from memory (the spool's feed) rather than read back from
    /// its files.
    pub from_memory: AtomicU64,
    /// Batches that failed (and were retried).
    pub failures: AtomicU64,
    /// The last failure, if the last try failed.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// How long a stopping delivery gives its sink to close its connection (a TLS close_notify).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running delivery tasks; dropping it stops them: each stores its cursor, then closes its
/// sink's connection (at most [`CLOSE_TIMEOUT`]). [`Delivery::stop`] does the same and waits;
/// [`Spool::stop_deliveries`] stops every delivery of a spool and waits.
#[derive(Debug)]
pub struct Delivery {
    /// Dropped with the delivery, which tells the tasks to stop.
    stop: tokio::sync::watch::Sender<()>,
    /// How many of its tasks still run.
    running: tokio::sync::watch::Sender<usize>,
    status: Vec<Arc<TargetStatus>>,
}

impl Delivery {
    /// Starts one task per target (on the current Tokio runtime).
    pub fn start(
        spool: &Arc<Spool>,
        targets: Vec<Target>,
        options: DeliveryOptions,
    ) -> Result<Self, SpoolError> {
        let mut status = Vec::new();
        let (stop, _) = tokio::sync::watch::channel(());
        let running = tokio::sync::watch::Sender::new(0);
        for target in targets {
            let file = tenant_file(spool.dir(), &target.tenant);
            let stem =
                file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let cursor_path =
                spool.dir().join("cursors").join(&target.name).join(format!("{stem}.cursor"));
            let cursor = Cursor::load(&cursor_path)?;
            let delivered = spool.register_reader(&target.tenant, cursor.seq);
            // Room for two batches: a reader that falls further behind reads the files.
            let feed = spool.feed(&target.tenant, 2 * target.sink.max_batch().max(1));
            let state = Arc::new(TargetStatus {
                tenant: target.tenant.clone(),
                name: target.name.clone(),
                delivered,
                ..TargetStatus::default()
            });
            let worker = Worker {
                synced: spool.synced(&target.tenant),
                file,
                cursor_path,
                committed: cursor,
                next: cursor,
                reader: None,
                feed,
                stored_at: None,
                sink: target.sink,
                status: Arc::clone(&state),
                options,
            };
            let (stopping, in_spool) = spool.delivery_started();
            let task = crate::spool::RunningDelivery::new(&running);
            tokio::spawn(worker.run_until_stopped(stop.subscribe(), stopping, (in_spool, task)));
            status.push(state);
        }
        Ok(Self { stop, running, status })
    }

    /// Each target's status.
    pub fn status(&self) -> &[Arc<TargetStatus>] {
        &self.status
    }

    /// Stops the tasks (each stores its cursor, then closes its sink) and waits for them, at
    /// most `within`; returns whether all stopped. A delivery started afterwards for the same
    /// sinks resumes from the stored cursors.
    pub async fn stop(self, within: Duration) -> bool {
        let Self { stop, running, .. } = self;
        let mut tasks = running.subscribe();
        drop(stop);
        tokio::time::timeout(within, tasks.wait_for(|n| *n == 0)).await.is_ok()
    }
}

/// How far a sink has received a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The last record delivered (0: none).
    seq: u64,
    /// The byte offset just after it in the file that holds it.
    offset: u64,
    /// Which file that is: the `seq` of its first record (0: not known; the place is then
    /// found by reading from the start of the file that holds the next record).
    #[serde(default)]
    file_first: u64,
}

impl Cursor {
    fn load(path: &Path) -> Result<Self, SpoolError> {
        match std::fs::read(path) {
            // A cursor that cannot be read is started over: records are sent again, not lost.
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(SpoolError::Io { path: path.to_owned(), reason: e.to_string() }),
        }
    }

    /// Replaces the cursor file (write, then rename: never half written). Not synced: a cursor
    /// lost in a power cut only sends records again.
    fn store(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension("cursor.tmp");
        std::fs::write(&temporary, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(&temporary, path)
    }
}

struct Worker {
    synced: tokio::sync::watch::Receiver<u64>,
    file: PathBuf,
    cursor_path: PathBuf,
    /// What the sink is known to have.
    committed: Cursor,
    /// Where reading goes on (ahead of `committed` while batches settle).
    next: Cursor,
    /// The open file and the `seq` of its first record.
    reader: Option<(BufReader<File>, u64)>,
    /// Records as the spool syncs them.
    feed: Arc<Feed>,
    /// When the cursor file was last written (none: `committed` is stored).
    stored_at: Option<Instant>,
    sink: Box<dyn Sink>,
    status: Arc<TargetStatus>,
    options: DeliveryOptions,
}

/// A delivery stopped (dropped, or the proxy shutting down) stores its cursor, so that a restart
/// after a clean stop sends nothing again; only a crash loses the last interval's progress.
impl Drop for Worker {
    fn drop(&mut self) {
        if self.status.delivered.load(Ordering::Relaxed) != self.committed.seq {
            self.store_cursor();
        }
    }
}

impl Worker {
    /// Delivers until the [`Delivery`] is dropped (`stop` closes) or the spool stops its
    /// deliveries (`stopping` turns true).
    async fn run_until_stopped(
        mut self,
        mut stop: tokio::sync::watch::Receiver<()>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
        running: (crate::spool::RunningDelivery, crate::spool::RunningDelivery),
    ) {
        tokio::select! {
            // A stop wins over more delivery, also when both are ready at the first poll.
            biased;
            _ = stop.changed() => {}
            _ = stopping.wait_for(|stop| *stop) => {}
            () = self.run() => {}
        }
        // Progress first, so that a delivery started next for this sink resumes from it.
        if self.status.delivered.load(Ordering::Relaxed) != self.committed.seq {
            self.store_cursor();
        }
        // A SIEM that does not answer must not hold up a stop.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.close()).await;
        drop(running);
    }

    async fn run(&mut self) {
        let mut retry = self.options.retry_min;
        // Batches sent but not yet settled (syslog): when each was sent, and the cursor after it.
        let mut unsettled: std::collections::VecDeque<(Instant, Cursor)> = Default::default();
        let settle = self.sink.settle_time();
        loop {
            let synced = *self.synced.borrow_and_update();
            if let Err(error) = self.settle(&mut unsettled, settle).await {
                self.failed(&error, &mut unsettled, &mut retry).await;
                continue;
            }
            if self.next.seq < synced {
                let fed = self.take_fed();
                let from_memory = fed.len() as u64;
                let batch = match if fed.is_empty() { self.read(synced).await } else { Ok(fed) } {
                    Ok(batch) => batch,
                    Err(reason) => {
                        let error = SinkError::Unreachable {
                            target: self.file.display().to_string(),
                            reason,
                        };
                        self.failed(&error, &mut unsettled, &mut retry).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    // Synced but not readable yet (or in the next segment): look again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let after = self.next;
                match self.sink.send(&self.status.tenant, &batch).await {
                    Ok(()) => {
                        self.status.from_memory.fetch_add(from_memory, Ordering::Relaxed);
                        retry = self.options.retry_min;
                        *lock(&self.status.last_error) = None;
                        if settle.is_zero() {
                            self.commit(after);
                        } else {
                            unsettled.push_back((Instant::now(), after));
                        }
                    }
                    Err(error) => self.failed(&error, &mut unsettled, &mut retry).await,
                }
                continue;
            }
            // Nothing new to read: store the cursor (at most once per interval: under load
            // delivery catches up after nearly every commit, and a store per catch-up cost
            // more renames than the spool made syncs), then wait for new records, for the
            // oldest batch to settle, or for the cursor's store to come due.
            let store_due = if self.status.delivered.load(Ordering::Relaxed) != self.committed.seq {
                self.store_cursor_if_due()
            } else {
                None
            };
            let mut wait = match unsettled.front() {
                Some((sent, _)) => (*sent + settle).saturating_duration_since(Instant::now()),
                None => Duration::from_secs(5),
            };
            if let Some(due) = store_due {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            let _ = tokio::time::timeout(wait, self.synced.changed()).await;
        }
    }

    /// Commits the batches that have settled, if the connection that carried them is open.
    async fn settle(
        &mut self,
        unsettled: &mut std::collections::VecDeque<(Instant, Cursor)>,
        settle: Duration,
    ) -> Result<(), SinkError> {
        let now = Instant::now();
        let mut settled = None;
        while let Some(&(sent, after)) = unsettled.front() {
            if now.duration_since(sent) < settle {
                break;
            }
            settled = Some(after);
            unsettled.pop_front();
        }
        if let Some(after) = settled {
            self.sink.check().await?;
            self.commit(after);
        }
        Ok(())
    }

    fn commit(&mut self, cursor: Cursor) {
        self.committed = cursor;
        self.store_cursor_if_due();
    }

    /// Stores the cursor unless it was stored less than an interval ago; then returns when
    /// the next store is due.
    fn store_cursor_if_due(&mut self) -> Option<Instant> {
        match self.stored_at {
            Some(at) if at.elapsed() < self.options.cursor_interval => {
                Some(at + self.options.cursor_interval)
            }
            _ => {
                self.store_cursor();
                None
            }
        }
    }

    /// Writes the committed cursor to its file, and only then counts it as delivered (for
    /// backlogs and deleting segments: a restart resumes from the file).
    fn store_cursor(&mut self) {
        if let Err(e) = self.committed.store(&self.cursor_path) {
            tracing::warn!(path = %self.cursor_path.display(), error = %e, "cannot store an audit delivery cursor");
        }
        self.status.delivered.store(self.committed.seq, Ordering::Relaxed);
        self.stored_at = Some(Instant::now());
    }

    /// The records after `self.next` that the spool's feed holds, moving `self.next` past them.
    fn take_fed(&mut self) -> Vec<Outgoing> {
        let fed = self.feed.take(self.next.seq, self.sink.max_batch());
        let Some(last) = fed.last() else { return Vec::new() };
        self.next =
            Cursor { seq: last.record.seq, offset: last.offset, file_first: last.file_first };
        // The open file's position is behind now: it is found again if it is needed.
        self.reader = None;
        fed.into_iter().map(|f| f.record).collect()
    }

    /// After a failure: back to the last committed record, then wait.
    async fn failed(
        &mut self,
        error: &SinkError,
        unsettled: &mut std::collections::VecDeque<(Instant, Cursor)>,
        retry: &mut Duration,
    ) {
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.status.last_error) = Some(error.to_string());
        tracing::warn!(
            tenant = %self.status.tenant,
            sink = %self.status.name,
            %error,
            retry_ms = retry.as_millis() as u64,
            "audit delivery failed; it will be retried"
        );
        unsettled.clear();
        self.next = self.committed;
        self.reader = None;
        // Back to the files until caught up: nothing piles up in memory for a failing sink.
        self.feed.pause();
        tokio::time::sleep(jitter(*retry)).await;
        *retry = (*retry * 2).min(self.options.retry_max);
    }

    /// Reads the records after `self.next`, up to `synced` and the sink's batch size.
    async fn read(&mut self, synced: u64) -> Result<Vec<Outgoing>, String> {
        let reader = self.reader.take();
        let (path, next, max) = (self.file.clone(), self.next, self.sink.max_batch());
        let (reader, result) = tokio::task::spawn_blocking(move || {
            let (mut reader, next) = match reader {
                Some(reader) => (reader, next),
                None => match open_for(&path, next) {
                    Ok(opened) => opened,
                    Err(e) => return (None, Err(ReadError::Other(e))),
                },
            };
            let result = read_batch(&mut reader.0, next, synced, max).map(|r| (r, next));
            (Some(reader), result)
        })
        .await
        .map_err(|e| e.to_string())?;
        match result {
            Ok(((batch, offset), from)) => {
                if from.seq > self.next.seq {
                    tracing::warn!(
                        tenant = %self.status.tenant,
                        sink = %self.status.name,
                        missing = from.seq - self.next.seq,
                        "audit delivery: records this sink never received were already deleted from the spool (delivered to every other sink); going on after them"
                    );
                    self.next.seq = from.seq;
                }
                let file_first = reader.as_ref().map_or(0, |r| r.1);
                match batch.last() {
                    Some(last) => {
                        self.next = Cursor { seq: last.seq, offset, file_first };
                        self.reader = reader;
                        if last.seq >= synced {
                            // Caught up: what is synced from now on can come from memory.
                            self.feed.resume();
                        }
                    }
                    // At the end of this file: the next records may be in the next one (the
                    // spool began a new segment), so find the file again next time.
                    None => self.reader = None,
                }
                Ok(batch)
            }
            Err(ReadError::Reset) => {
                // The cursor does not point at the record after it: find the place again by
                // reading from the start of the file that holds it.
                self.next = Cursor { seq: self.next.seq, offset: 0, file_first: 0 };
                self.committed.offset = 0;
                self.committed.file_first = 0;
                Ok(Vec::new())
            }
            Err(ReadError::Other(e)) => Err(e),
        }
    }
}

enum ReadError {
    Reset,
    Other(String),
}

impl From<String> for ReadError {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

/// Opens the file that holds the record after `next` (a closed segment, or the current file)
/// where reading goes on; returns it with its first `seq`, and the cursor to read from (its
/// `seq` moved forward if the records after `next` were deleted).
fn open_for(current: &Path, next: Cursor) -> Result<((BufReader<File>, u64), Cursor), String> {
    let wanted = next.seq + 1;
    let mut files = crate::segment::segments(current);
    let current_first = crate::segment::first_record_seq(current).map_err(|e| e.to_string())?;
    if current_first > 0 {
        files.push((current_first, current.to_owned()));
    }
    let (first, path, mut from) = match files.iter().rev().find(|(first, _)| *first <= wanted) {
        Some((first, path)) => (*first, path.clone(), next),
        // Everything from `wanted` on was deleted: go on from the oldest record left.
        None => match files.first() {
            Some((first, path)) => {
                (*first, path.clone(), Cursor { seq: first - 1, offset: 0, file_first: 0 })
            }
            None => (0, current.to_owned(), next),
        },
    };
    // The byte offset holds only in the file it was taken in; elsewhere read from the start.
    if next.file_first == 0 || next.file_first != first {
        from.offset = 0;
    }
    let mut file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(from.offset)).map_err(|e| e.to_string())?;
    Ok(((BufReader::with_capacity(256 * 1024, file), first), from))
}

/// Reads whole records after `next` (skipping those up to `next.seq` when reading from the
/// start), at most `max`, none past `synced`. Returns them and the offset after the last.
fn read_batch(
    reader: &mut BufReader<File>,
    next: Cursor,
    synced: u64,
    max: usize,
) -> Result<(Vec<Outgoing>, u64), ReadError> {
    let mut batch = Vec::new();
    let mut offset = next.offset;
    let mut expected = next.seq + 1;
    let mut line = String::new();
    while batch.len() < max && expected <= synced {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 || !line.ends_with('\n') {
            // The end of what is written: go back to the start of this line.
            reader.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
            break;
        }
        let record = match Outgoing::parse(line.trim_end().to_owned()) {
            Ok(record) => record,
            Err(_) if next.offset > 0 && batch.is_empty() => return Err(ReadError::Reset),
            Err(e) => return Err(format!("record after seq {}: {e}", expected - 1).into()),
        };
        offset += n as u64;
        if record.seq < expected && next.offset == 0 {
            continue; // reading from the start: delivered before
        }
        if record.seq != expected {
            if next.offset > 0 && batch.is_empty() {
                return Err(ReadError::Reset);
            }
            return Err(format!("expected record {expected}, found {}", record.seq).into());
        }
        expected += 1;
        batch.push(record);
    }
    Ok((batch, offset))
}

/// `wait` ± 20 %, so that many streams failing together do not retry together.
fn jitter(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let factor = 0.8 + f64::from(nanos % 1000) / 2500.0;
    wait.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditEvent, EventKind};
    use std::sync::Mutex;

    /// Records what it receives; fails while `failing` is set; counts its closes.
    #[derive(Clone, Default)]
    struct Collector {
        received: Arc<Mutex<Vec<u64>>>,
        records: Arc<Mutex<Vec<Outgoing>>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        closed: Arc<AtomicU64>,
    }

    #[async_trait::async_trait]
    impl Sink for Collector {
        async fn send(&mut self, _tenant: &str, records: &[Outgoing]) -> Result<(), SinkError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(SinkError::Unreachable {
                    target: "test".into(),
                    reason: "down".into(),
                });
            }
            self.received.lock().unwrap().extend(records.iter().map(|r| r.seq));
            self.records.lock().unwrap().extend_from_slice(records);
            Ok(())
        }
        fn max_batch(&self) -> usize {
            7
        }
        async fn close(&mut self) {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn append(spool: &Spool, tenant: &str, n: usize) {
        for _ in 0..n {
            spool.append(AuditEvent::new(EventKind::Data, tenant, "wrap")).await.unwrap();
        }
    }

    async fn wait_for(collector: &Collector, n: usize) {
        for _ in 0..500 {
            if collector.received.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {:?} delivered", collector.received.lock().unwrap());
    }

    /// Waits (up to 5 s) until `done` holds.
    async fn eventually(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(done(), "still not done after 5 s");
    }

    fn options() -> DeliveryOptions {
        DeliveryOptions {
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
            cursor_interval: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn every_record_arrives_in_order_through_failures_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64).unwrap();
        append(&spool, "acme", 10).await;
        let collector = Collector::default();
        let target = |c: &Collector| Target {
            tenant: "acme".into(),
            name: "siem".into(),
            sink: Box::new(c.clone()),
        };
        let delivery = Delivery::start(&spool, vec![target(&collector)], options()).unwrap();
        wait_for(&collector, 10).await;
        // The cursor is stored (and the backlog counted from it) at most every 20 ms here.
        eventually(|| spool.backlog("acme") == 0).await;

        // The SIEM goes down: records wait, the backlog grows, nothing is lost.
        collector.failing.store(true, Ordering::Relaxed);
        append(&spool, "acme", 20).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(spool.backlog("acme"), 20);
        assert!(delivery.status()[0].failures.load(Ordering::Relaxed) > 0);
        collector.failing.store(false, Ordering::Relaxed);
        wait_for(&collector, 30).await;
        assert_eq!(*collector.received.lock().unwrap(), (1..=30).collect::<Vec<_>>());
        // Stopped, and waited for: its cursor is stored before the restart reads it.
        assert!(delivery.stop(Duration::from_secs(5)).await);

        // A restart resumes at the cursor: nothing is sent twice, new records follow.
        drop(spool);
        let spool = Spool::open(dir.path(), 64).unwrap();
        let again = Collector::default();
        let _delivery = Delivery::start(&spool, vec![target(&again)], options()).unwrap();
        append(&spool, "acme", 3).await;
        wait_for(&again, 3).await;
        assert_eq!(*again.received.lock().unwrap(), vec![31, 32, 33]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopped_deliveries_store_their_cursors_and_close_their_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64).unwrap();
        append(&spool, "acme", 5).await;
        let target = |name: &str, c: &Collector| Target {
            tenant: "acme".into(),
            name: name.into(),
            sink: Box::new(c.clone()),
        };
        // A long cursor interval: only a stop stores the cursor after the first batch.
        let options = DeliveryOptions { cursor_interval: Duration::from_secs(3600), ..options() };
        let (one, two) = (Collector::default(), Collector::default());
        let first = Delivery::start(&spool, vec![target("one", &one)], options).unwrap();
        let _second = Delivery::start(&spool, vec![target("two", &two)], options).unwrap();
        wait_for(&one, 5).await;
        wait_for(&two, 5).await;
        append(&spool, "acme", 2).await;
        wait_for(&one, 7).await;
        wait_for(&two, 7).await;

        // Dropping a delivery stops its tasks only; each closes its sink once.
        drop(first);
        eventually(|| one.closed.load(Ordering::Relaxed) == 1).await;
        assert_eq!(two.closed.load(Ordering::Relaxed), 0);
        // The spool stops the rest and waits for them.
        assert!(spool.stop_deliveries(Duration::from_secs(5)).await);
        assert_eq!(two.closed.load(Ordering::Relaxed), 1);
        assert_eq!(one.closed.load(Ordering::Relaxed), 1);
        // A delivery started after that stops at once, sending nothing.
        append(&spool, "acme", 1).await;
        let three = Collector::default();
        let _third = Delivery::start(&spool, vec![target("three", &three)], options).unwrap();
        eventually(|| three.closed.load(Ordering::Relaxed) == 1).await;
        assert!(three.received.lock().unwrap().is_empty());

        // Both cursors were stored at the stop: a restart sends only what is new.
        drop(spool);
        let spool = Spool::open(dir.path(), 64).unwrap();
        let (one, two) = (Collector::default(), Collector::default());
        let _deliveries =
            Delivery::start(&spool, vec![target("one", &one), target("two", &two)], options)
                .unwrap();
        wait_for(&one, 1).await;
        wait_for(&two, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*one.received.lock().unwrap(), vec![8]);
        assert_eq!(*two.received.lock().unwrap(), vec![8]);
    }

    /// Every record of the spool directory's files for `tenant` (closed segments, then the
    /// current file), as one text.
    fn spooled(spool: &Spool, tenant: &str) -> String {
        let current = spool.tenant_file(tenant);
        let mut files: Vec<PathBuf> =
            crate::segment::segments(&current).into_iter().map(|(_, p)| p).collect();
        files.push(current);
        files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_are_read_in_order_and_deleted_once_every_sink_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool_options = crate::spool::SpoolOptions::new(64);
        spool_options.segment_bytes = 2000; // a few records each
        spool_options.checkpoint_interval = Duration::from_millis(50);
        let spool = Spool::open_with(dir.path(), spool_options.clone()).unwrap();
        append(&spool, "acme", 40).await;
        let (fast, slow) = (Collector::default(), Collector::default());
        slow.failing.store(true, Ordering::Relaxed);
        let target = |c: &Collector, name: &str| Target {
            tenant: "acme".into(),
            name: name.into(),
            sink: Box::new(c.clone()),
        };
        let delivery =
            Delivery::start(&spool, vec![target(&fast, "fast"), target(&slow, "slow")], options())
                .unwrap();
        wait_for(&fast, 40).await;
        assert_eq!(*fast.received.lock().unwrap(), (1..=40).collect::<Vec<_>>());
        let segments = || crate::segment::segments(&spool.tenant_file("acme")).len();
        assert!(segments() >= 5, "{}", segments());
        // The slow sink has nothing yet: nothing is deleted.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = spooled(&spool, "acme");
        assert_eq!(crate::chain::verify(text.as_bytes(), false).unwrap().records, 40);
        // Once it has everything, the delivered segments go.
        slow.failing.store(false, Ordering::Relaxed);
        wait_for(&slow, 40).await;
        assert_eq!(*slow.received.lock().unwrap(), (1..=40).collect::<Vec<_>>());
        for _ in 0..100 {
            if segments() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(segments(), 0);
        // The chain goes on in the current file, and delivery with it.
        append(&spool, "acme", 10).await;
        wait_for(&fast, 50).await;
        assert_eq!(*fast.received.lock().unwrap(), (1..=50).collect::<Vec<_>>());
        let text = spooled(&spool, "acme");
        let verified = crate::chain::verify(text.as_bytes(), true).unwrap();
        assert_eq!(verified.head.seq, 50);
        // Stopped, and waited for: its cursor is stored before the restart reads it.
        assert!(delivery.stop(Duration::from_secs(5)).await);

        // A restart, with the current file lost right after a rotation: the chain goes on
        // from the last segment.
        drop(spool);
        let current = dir.path().join("acme.jsonl");
        let first = crate::segment::first_record_seq(&current).unwrap();
        if first > 0 {
            let mut name = current.file_name().unwrap().to_os_string();
            name.push(format!(".{first:020}"));
            std::fs::rename(&current, current.with_file_name(name)).unwrap();
        }
        let spool = Spool::open_with(dir.path(), spool_options).unwrap();
        assert_eq!(
            spool.append(AuditEvent::new(EventKind::Data, "acme", "wrap")).await.unwrap(),
            51
        );
        let again = Collector::default();
        let _delivery = Delivery::start(&spool, vec![target(&again, "fast")], options()).unwrap();
        wait_for(&again, 1).await;
        assert_eq!(*again.received.lock().unwrap(), vec![51]);
        let text = spooled(&spool, "acme");
        assert_eq!(crate::chain::verify(text.as_bytes(), true).unwrap().head.seq, 51);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_just_synced_come_from_memory_and_a_backlog_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64).unwrap();
        let collector = Collector::default();
        let delivery = Delivery::start(
            &spool,
            vec![Target {
                tenant: "acme".into(),
                name: "siem".into(),
                sink: Box::new(collector.clone()),
            }],
            options(),
        )
        .unwrap();
        let status = &delivery.status()[0];
        let from_memory = || status.from_memory.load(Ordering::Relaxed);
        // Delivery keeps up (here: each record is delivered before the next is appended, so
        // that a slow test machine cannot fill the feed): every record comes from memory.
        for n in 1..=20 {
            append(&spool, "acme", 1).await;
            wait_for(&collector, n).await;
        }
        assert_eq!(from_memory(), 20);

        // The sink fails: the feed pauses, the backlog is read from the file.
        collector.failing.store(true, Ordering::Relaxed);
        append(&spool, "acme", 30).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        collector.failing.store(false, Ordering::Relaxed);
        wait_for(&collector, 50).await;
        assert_eq!(from_memory(), 20, "the backlog came from the file");
        // Caught up, new records come from memory again.
        for n in 51..=60 {
            append(&spool, "acme", 1).await;
            wait_for(&collector, n).await;
        }
        assert_eq!(*collector.received.lock().unwrap(), (1..=60).collect::<Vec<_>>());
        assert!(from_memory() > 20, "{}", from_memory());

        // What memory gave is exactly what reading the file gives.
        let text = std::fs::read_to_string(spool.tenant_file("acme")).unwrap();
        let from_file: Vec<Outgoing> =
            text.lines().map(|l| Outgoing::parse(l.to_owned()).unwrap()).collect();
        assert_eq!(*collector.records.lock().unwrap(), from_file);

        // Once delivery is idle the cursor file holds the last record: a restart sends nothing
        // again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(delivery);
        let cursor: Cursor = serde_json::from_slice(
            &std::fs::read(dir.path().join("cursors/siem/acme.cursor")).unwrap(),
        )
        .unwrap();
        assert_eq!((cursor.seq, cursor.offset), (60, text.len() as u64));
    }

    #[tokio::test]
    async fn a_lost_cursor_sends_everything_again_and_a_new_sink_gets_the_past() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64).unwrap();
        append(&spool, "acme", 5).await;
        let first = Collector::default();
        let delivery = Delivery::start(
            &spool,
            vec![Target {
                tenant: "acme".into(),
                name: "siem".into(),
                sink: Box::new(first.clone()),
            }],
            options(),
        )
        .unwrap();
        wait_for(&first, 5).await;
        // Stopped and waited for, so that its own store of the cursor comes before the damage.
        assert!(delivery.stop(Duration::from_secs(5)).await);
        std::fs::write(dir.path().join("cursors/siem/acme.cursor"), b"garbage").unwrap();
        let second = Collector::default();
        let _delivery = Delivery::start(
            &spool,
            vec![Target {
                tenant: "acme".into(),
                name: "siem".into(),
                sink: Box::new(second.clone()),
            }],
            options(),
        )
        .unwrap();
        wait_for(&second, 5).await;
        assert_eq!(*second.received.lock().unwrap(), (1..=5).collect::<Vec<_>>());
    }
}
