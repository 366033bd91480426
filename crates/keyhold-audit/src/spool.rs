//! The durable on-disk spool: every event is appended to its tenant's chained file, and synced
//! to disk, before [`Spool::append`] returns — so before the request that caused it is answered.
//! ([`SpoolOptions::sync`] off: written to the file, not synced; safe from the process's crash,
//! not the host's.)
//!
//! With syncs, one writer thread takes events from a queue in batches (group commit): it
//! appends every waiting event (and those that arrive while it writes), then syncs each file it
//! touched once, then answers them all. Under load many requests share one sync; a lone request
//! pays one. Without syncs there is nothing to share: each caller appends its own event under
//! the writer's lock, on its own thread, and no hand-off to another thread (and back) is made.
//!
//! Layout: `DIR/<tenant>.jsonl`, one chained record per line (see [`crate::chain`]). Tenant ids
//! that are not plain file names (`[A-Za-z0-9._-]`, up to 100 bytes, not starting with `.`) use
//! `DIR/t-<first 32 hex digits of SHA-256(tenant)>.jsonl`. A record cut short by a crash (never
//! answered: its sync had not returned) is removed when the file is next opened.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::chain::{ChainHead, Record};
use crate::checkpoint::CheckpointSigner;
use crate::event::AuditEvent;
use crate::segment::{first_record_seq, segment_base, segment_path, segments, sync_dir};
use crate::sink::Outgoing;

/// Most events one group commit takes.
const MAX_BATCH: usize = 4096;

/// Why an event could not be spooled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// Reading, writing or syncing the spool failed.
    #[error("audit spool {path}: {reason}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// The last record of a spool file is not a chained record: the spool will not extend a
    /// chain it cannot read (an operator must look at the file).
    #[error("audit spool {path} ends in something that is not a chained record: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The writer has stopped (the process is shutting down).
    #[error("the audit spool is closed")]
    Closed,
}

struct Job {
    tenant: String,
    /// The event's canonical JSON, made by the caller (work the single writer need not do).
    canonical: Vec<u8>,
    /// The event's id, time and outcome, which sinks need besides the line (see [`Feed`]).
    light: Light,
    /// Who waits for the outcome (none for the spool's own checkpoints).
    done: Option<tokio::sync::oneshot::Sender<Result<u64, SpoolError>>>,
}

/// What [`Outgoing`] holds besides the line, taken from the event rather than parsed again.
struct Light {
    id: String,
    time: String,
    outcome: String,
}

impl Job {
    fn new(
        event: AuditEvent,
        done: Option<tokio::sync::oneshot::Sender<Result<u64, SpoolError>>>,
    ) -> Result<Self, std::io::Error> {
        let canonical = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
        let AuditEvent { tenant, id, time, outcome, .. } = event;
        Ok(Self { tenant, canonical, light: Light { id, time, outcome }, done })
    }

    fn answer(self, outcome: Result<u64, SpoolError>) {
        if let Some(done) = self.done {
            let _ = done.send(outcome);
        }
    }
}

/// What the writer thread receives.
// Ticks are rare; boxing every event instead would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Message {
    Append(Job),
    /// Time for checkpoints.
    Tick,
    /// A checkpoint now for every stream with records since its last one, answered once it
    /// is written (a proxy shutting down signs the end of its streams).
    Seal(tokio::sync::oneshot::Sender<()>),
}

/// How a spool works.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Most events waiting for the writer thread (with syncs); callers wait when it is full.
    pub queue_capacity: usize,
    /// Signs checkpoints (none: no checkpoints).
    pub signer: Option<Arc<CheckpointSigner>>,
    /// A tenant's stream gets a checkpoint at least this often when it has new records.
    pub checkpoint_interval: std::time::Duration,
    /// ... and after at most this many records.
    pub checkpoint_every: u64,
    /// This proxy's name, in checkpoint events.
    pub instance: String,
    /// A tenant's file is closed as a segment once it holds this many bytes, and a new one
    /// begun (the chain goes on across them).
    pub segment_bytes: u64,
    /// Delete the segments every reader of the tenant has acknowledged (only tenants with
    /// readers: without sinks, the spool is the only copy and is kept).
    pub delete_delivered: bool,
    /// Under concurrent load (the last commit covered more than one event), how long after
    /// the start of the last commit the writer lets events gather before the next: fewer
    /// wake-ups and disk syncs per event, for at most this much more latency. Zero: commit at
    /// once.
    pub commit_window: std::time::Duration,
    /// Sync each commit to disk (`fdatasync`) before answering its events (default). Off,
    /// an event is answered once written to its file, that is handed to the operating
    /// system: it survives the proxy's crash or `kill -9`, not the host's crash or power loss
    /// (and there is then no commit window: nothing to share; each caller writes its own event
    /// under the writer's lock).
    pub sync: bool,
}

impl SpoolOptions {
    /// No checkpoints, `queue_capacity` events waiting at most.
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            queue_capacity,
            signer: None,
            checkpoint_interval: std::time::Duration::from_secs(60),
            checkpoint_every: 10_000,
            instance: String::new(),
            segment_bytes: 64 * 1024 * 1024,
            delete_delivered: true,
            commit_window: std::time::Duration::from_micros(1000),
            sync: true,
        }
    }
}

/// The spool of one proxy.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    queue: tokio::sync::mpsc::Sender<Message>,
    tenants: Arc<Tenants>,
    /// Without syncs: the writer, which callers use themselves (its thread only makes the
    /// timed checkpoints).
    inline: Option<Arc<std::sync::Mutex<Writer>>>,
    /// Whether the deliveries reading this spool are to stop (the proxy shutting down).
    stopping: tokio::sync::watch::Sender<bool>,
    /// How many delivery tasks are running.
    deliveries: tokio::sync::watch::Sender<usize>,
}

/// Counts one running delivery task in `count` while it lives (for [`Spool::stop_deliveries`]
/// and `Delivery::stop`, which wait for their count to reach zero).
#[derive(Debug)]
pub(crate) struct RunningDelivery(tokio::sync::watch::Sender<usize>);

impl RunningDelivery {
    pub(crate) fn new(count: &tokio::sync::watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count.clone())
    }
}

impl Drop for RunningDelivery {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What the spool knows of each tenant's stream: how far it is on disk, and how far each
/// reader (a sink's delivery) has acknowledged it.
#[derive(Debug, Default)]
struct Tenants {
    streams: std::sync::Mutex<HashMap<String, TenantStream>>,
}

#[derive(Debug)]
struct TenantStream {
    /// The `seq` of the last record synced to disk.
    synced: tokio::sync::watch::Sender<u64>,
    /// The `seq` each registered reader has acknowledged.
    readers: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// Where the writer hands each reader the records it synced.
    feeds: Vec<Arc<Feed>>,
}

impl TenantStream {
    fn new(synced: u64) -> Self {
        Self {
            synced: tokio::sync::watch::Sender::new(synced),
            readers: Vec::new(),
            feeds: Vec::new(),
        }
    }
}

/// Synced records handed by the writer straight to one reader (a sink's delivery), so that
/// delivery need not read back and parse what was just written. The files stay the source:
/// the feed is bounded, skipped while full or paused (the reader's sink is failing), and a
/// reader fills any gap from the files ([`Feed::take`] returns only the records that follow
/// on from where the reader is).
#[derive(Debug)]
pub struct Feed {
    records: std::sync::Mutex<std::collections::VecDeque<Fed>>,
    capacity: usize,
    paused: std::sync::atomic::AtomicBool,
}

/// A synced record as a [`Feed`] hands it over, with where it lies in the spool's files.
#[derive(Debug, Clone)]
pub struct Fed {
    /// The record.
    pub record: Outgoing,
    /// The byte offset just after it in the file that holds it.
    pub offset: u64,
    /// The `seq` of that file's first record.
    pub file_first: u64,
}

impl Feed {
    /// An empty feed holding at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            records: std::sync::Mutex::new(std::collections::VecDeque::new()),
            capacity: capacity.max(1),
            paused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The records that follow `after` without a gap, at most `most`; drops those up to
    /// `after` (the reader has them). Empty when the next record is not here: the reader then
    /// reads the files.
    pub fn take(&self, after: u64, most: usize) -> Vec<Fed> {
        let mut records = lock(&self.records);
        while records.front().is_some_and(|f| f.record.seq <= after) {
            records.pop_front();
        }
        let mut taken = Vec::new();
        let mut expected = after + 1;
        while taken.len() < most && records.front().is_some_and(|f| f.record.seq == expected) {
            taken.extend(records.pop_front());
            expected += 1;
        }
        taken
    }

    /// Empties the feed and stops it filling (a reader going back to the files for a while).
    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::Relaxed);
        lock(&self.records).clear();
    }

    /// Lets it fill again.
    pub fn resume(&self) {
        self.paused.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn open(&self) -> bool {
        !self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds records after a sync (all of them, or none if they would not fit: a gap is filled
    /// from the files either way).
    fn push(&self, fed: Vec<Fed>) {
        if !self.open() {
            return;
        }
        let mut records = lock(&self.records);
        if records.len() + fed.len() <= self.capacity {
            records.extend(fed);
        }
    }
}

/// Locks `mutex`, going on after a panic elsewhere (the data it guards stays consistent).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tenants {
    fn with<T>(&self, tenant: &str, f: impl FnOnce(&mut TenantStream) -> T) -> T {
        let mut streams = lock(&self.streams);
        f(streams.entry(tenant.to_owned()).or_insert_with(|| TenantStream::new(0)))
    }

    /// The lowest `seq` every reader of `tenant` acknowledged (none: it has no reader).
    fn acknowledged(&self, tenant: &str) -> Option<u64> {
        let streams = lock(&self.streams);
        let stream = streams.get(tenant)?;
        stream
            .readers
            .iter()
            .filter(|r| reader_alive(r))
            .map(|r| r.load(std::sync::atomic::Ordering::Relaxed))
            .min()
    }

    /// Whether anyone takes `tenant`'s records from a feed now (else the writer makes none).
    fn feeding(&self, tenant: &str) -> bool {
        let streams = lock(&self.streams);
        streams.get(tenant).is_some_and(|s| s.feeds.iter().any(|f| feed_alive(f) && f.open()))
    }

    /// Hands `fed` to every live feed of `tenant` (moved into the last, copied for the others).
    fn feed(&self, tenant: &str, fed: Vec<Fed>) {
        let streams = lock(&self.streams);
        let Some(stream) = streams.get(tenant) else { return };
        let mut live = stream.feeds.iter().filter(|f| feed_alive(f)).peekable();
        while let Some(feed) = live.next() {
            if live.peek().is_some() {
                feed.push(fed.clone());
            } else {
                feed.push(fed);
                break;
            }
        }
    }

    fn set_synced(&self, tenant: &str, seq: u64) {
        self.with(tenant, |stream| {
            stream.synced.send_if_modified(|current| {
                let moved = seq > *current;
                *current = (*current).max(seq);
                moved
            })
        });
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating it, mode 0700) the spool directory and starts its writer thread.
    /// `queue_capacity` bounds the events waiting to be written; callers wait when it is full.
    pub fn open(dir: &Path, queue_capacity: usize) -> Result<Arc<Self>, SpoolError> {
        Self::open_with(dir, SpoolOptions::new(queue_capacity))
    }

    /// Opens the spool with checkpoints and other [`SpoolOptions`].
    pub fn open_with(dir: &Path, options: SpoolOptions) -> Result<Arc<Self>, SpoolError> {
        create_private_dir(dir)?;
        let tenants = Arc::new(Tenants::default());
        // Open (and repair) every existing stream now, so readers know how far each is.
        let mut files = HashMap::new();
        let mut paths = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))? {
            let path = entry.map_err(|e| io_error(dir, &e))?.path();
            if path.extension().is_some_and(|ext| ext == "jsonl") {
                paths.insert(path);
            } else if let Some(base) = segment_base(&path) {
                // A segment whose current file is missing (a crash right after a rotation).
                paths.insert(base);
            }
        }
        for path in paths {
            let (file, tenant) = match open_tenant_file(&path) {
                Ok(opened) => opened,
                // That tenant's appends fail (and say why) until an operator looks at the file;
                // the other tenants go on.
                Err(SpoolError::Corrupt { .. }) => continue,
                Err(error) => return Err(error),
            };
            if let Some(tenant) = tenant {
                tenants.set_synced(&tenant, file.head.seq);
                files.insert(tenant, file);
            }
        }
        let (queue, jobs) = tokio::sync::mpsc::channel(options.queue_capacity.max(1));
        if options.signer.is_some() || options.delete_delivered {
            // Ticks for time-based checkpoints and for deleting delivered segments; stops when
            // the spool is dropped.
            let ticks = queue.downgrade();
            let interval = options.checkpoint_interval.max(std::time::Duration::from_millis(10));
            std::thread::Builder::new()
                .name("keyhold-audit-checkpoints".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(interval);
                        let Some(queue) = ticks.upgrade() else { break };
                        if queue.blocking_send(Message::Tick).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| io_error(dir, &e))?;
        }
        let sync = options.sync;
        let writer = Arc::new(std::sync::Mutex::new(Writer {
            dir: dir.to_owned(),
            files,
            tenants: Arc::clone(&tenants),
            options,
            unsynced_feed: Vec::new(),
        }));
        let inline = (!sync).then(|| Arc::clone(&writer));
        std::thread::Builder::new()
            .name("keyhold-audit-spool".into())
            .spawn(move || Writer::run(&writer, jobs))
            .map_err(|e| io_error(dir, &e))?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            queue,
            tenants,
            inline,
            stopping: tokio::sync::watch::Sender::new(false),
            deliveries: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Writes a signed checkpoint now for every stream with records since its last one, and
    /// returns once it is on disk (with syncs, synced): a proxy shutting down signs the end of
    /// its streams instead of leaving it to the next start. Without a signer, writes nothing.
    pub async fn seal(&self) -> Result<(), SpoolError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.queue.send(Message::Seal(done)).await.map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)
    }

    /// Records synced but not yet delivered to every sink, over all tenants (a delivery's
    /// progress counts once its cursor is stored).
    pub fn undelivered(&self) -> u64 {
        let tenants: Vec<String> = lock(&self.tenants.streams).keys().cloned().collect();
        tenants.iter().map(|tenant| self.backlog(tenant)).sum()
    }

    /// For a delivery task starting: the signal to stop, and its place in the count.
    pub(crate) fn delivery_started(&self) -> (tokio::sync::watch::Receiver<bool>, RunningDelivery) {
        (self.stopping.subscribe(), RunningDelivery::new(&self.deliveries))
    }

    /// Stops every delivery reading this spool (each stores its cursor and closes its
    /// connection the way its protocol says) and waits for them, at most `within`; returns
    /// whether all stopped. Deliveries started afterwards stop at once.
    pub async fn stop_deliveries(&self, within: std::time::Duration) -> bool {
        self.stopping.send_replace(true);
        let mut running = self.deliveries.subscribe();
        tokio::time::timeout(within, running.wait_for(|n| *n == 0)).await.is_ok()
    }

    /// Follows how far `tenant`'s stream is synced to disk (the `seq` of its last durable
    /// record; 0: none). Readers deliver only records up to it.
    pub fn synced(&self, tenant: &str) -> tokio::sync::watch::Receiver<u64> {
        self.tenants.with(tenant, |stream| stream.synced.subscribe())
    }

    /// Registers a reader of `tenant`'s stream (one sink's delivery) that acknowledged records
    /// up to `acknowledged`; it stores its progress in the returned counter, which
    /// [`Spool::backlog`] reads.
    pub fn register_reader(
        &self,
        tenant: &str,
        acknowledged: u64,
    ) -> Arc<std::sync::atomic::AtomicU64> {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(acknowledged));
        self.tenants.with(tenant, |stream| {
            // Readers whose delivery stopped (a sink removed) no longer hold the stream back.
            stream.readers.retain(reader_alive);
            stream.readers.push(Arc::clone(&counter));
        });
        counter
    }

    /// A feed of `tenant`'s records as they are synced, holding at most `capacity` (see
    /// [`Feed`]); it is fed while the returned handle lives.
    pub fn feed(&self, tenant: &str, capacity: usize) -> Arc<Feed> {
        let feed = Arc::new(Feed::new(capacity));
        self.tenants.with(tenant, |stream| {
            stream.feeds.retain(feed_alive);
            stream.feeds.push(Arc::clone(&feed));
        });
        feed
    }

    /// How many of `tenant`'s records the slowest reader has not yet acknowledged (0 without
    /// readers).
    pub fn backlog(&self, tenant: &str) -> u64 {
        // Asked before every data operation: look up only (no entry made, no allocation).
        let streams = lock(&self.tenants.streams);
        let Some(stream) = streams.get(tenant) else { return 0 };
        let synced = *stream.synced.borrow();
        stream
            .readers
            .iter()
            .filter(|r| reader_alive(r))
            .map(|r| synced.saturating_sub(r.load(std::sync::atomic::Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    }

    /// The tenants with a stream in this spool.
    pub fn tenants(&self) -> Vec<String> {
        let streams = lock(&self.tenants.streams);
        streams.iter().filter(|(_, s)| *s.synced.borrow() > 0).map(|(t, _)| t.clone()).collect()
    }

    /// Appends `event` to its tenant's chain and returns its `seq` once it is on disk.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, SpoolError> {
        let (done, mut answer) = tokio::sync::oneshot::channel();
        let job = Job::new(event, Some(done)).map_err(|e| io_error(&self.dir, &e))?;
        if let Some(writer) = &self.inline {
            // A write to the page cache: a few microseconds, less than handing the event to
            // another thread and being woken again.
            let tenant = job.tenant.clone();
            let mut writer = lock(writer);
            let written = writer.write(vec![job]);
            writer.sync(written);
            writer.checkpoint(false, Some(&tenant));
            drop(writer);
            return answer.try_recv().map_err(|_| SpoolError::Closed)?;
        }
        self.queue.send(Message::Append(job)).await.map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// The file holding `tenant`'s events.
    pub fn tenant_file(&self, tenant: &str) -> PathBuf {
        tenant_file(&self.dir, tenant)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The file of `tenant` under `dir`.
pub fn tenant_file(dir: &Path, tenant: &str) -> PathBuf {
    let plain = !tenant.is_empty()
        && tenant.len() <= 100
        && !tenant.starts_with('.')
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        dir.join(format!("{tenant}.jsonl"))
    } else {
        let digest = Sha256::digest(tenant.as_bytes());
        dir.join(format!("t-{}.jsonl", &hex::encode(digest)[..32]))
    }
}

struct TenantFile {
    file: File,
    path: PathBuf,
    head: ChainHead,
    /// The `seq` the last checkpoint signed (or the checkpoint's own, when it is the last).
    checkpointed: u64,
    /// The `seq` of the file's first record (0: the file is empty).
    first_seq: u64,
    /// The file's length.
    bytes: u64,
}

struct Writer {
    dir: PathBuf,
    files: HashMap<String, TenantFile>,
    tenants: Arc<Tenants>,
    options: SpoolOptions,
    /// Records written since the last sync, per tenant, for its feeds once synced.
    unsynced_feed: Vec<(String, Vec<Fed>)>,
}

impl Writer {
    /// The writer thread: group commits of the queued events (with syncs), timed checkpoints.
    fn run(writer: &std::sync::Mutex<Self>, mut jobs: tokio::sync::mpsc::Receiver<Message>) {
        // Without syncs there is nothing for events to share by waiting.
        let window = {
            let writer = lock(writer);
            if writer.options.sync {
                writer.options.commit_window
            } else {
                std::time::Duration::ZERO
            }
        };
        let mut last_batch = 0;
        let mut last_commit = std::time::Instant::now();
        while let Some(first) = jobs.blocking_recv() {
            let mut tick = false;
            let mut batch = Vec::new();
            let mut seals = Vec::new();
            match first {
                Message::Append(job) => batch.push(job),
                Message::Tick => tick = true,
                Message::Seal(answer) => {
                    tick = true;
                    seals.push(answer);
                }
            }
            // Under concurrent load (the last commit was shared), let more events arrive
            // before committing: fewer wake-ups and syncs per event. A lone request pays none.
            // The window counts from the start of the last commit, not from its end: the
            // time that commit took to write and sync is part of it, so under load commits
            // start once per window and an event waits half a window on average, not a whole
            // one plus a sync.
            if last_batch > 1 && !window.is_zero() {
                let left = window.saturating_sub(last_commit.elapsed());
                if !left.is_zero() {
                    std::thread::sleep(left);
                }
            }
            last_commit = std::time::Instant::now();
            drain(&mut jobs, &mut batch, &mut tick, &mut seals);
            let mut this = lock(writer);
            let mut written = this.write(batch);
            // Events that arrived while this batch was written share its sync.
            while written.len() < MAX_BATCH {
                let mut more = Vec::new();
                drain(&mut jobs, &mut more, &mut tick, &mut seals);
                if more.is_empty() {
                    break;
                }
                written.extend(this.write(more));
            }
            last_batch = written.len();
            this.sync(written);
            this.checkpoint(tick, None);
            for answer in seals {
                let _ = answer.send(());
            }
        }
    }

    /// Appends a signed checkpoint to each stream that needs one: after `checkpoint_every`
    /// records, or on a tick when it has records since its last checkpoint (`only`: look at
    /// that tenant's stream alone).
    fn checkpoint(&mut self, tick: bool, only: Option<&str>) {
        if tick {
            let tenants: Vec<String> = self.files.keys().cloned().collect();
            for tenant in &tenants {
                self.prune(tenant);
            }
        }
        let Some(signer) = self.options.signer.clone() else { return };
        let every = self.options.checkpoint_every.max(1);
        let mut jobs = Vec::new();
        // One stream looked up, or all of them (`take(0)` walks none).
        let one = only.and_then(|tenant| self.files.get_key_value(tenant));
        let all = self.files.iter().take(if only.is_none() { usize::MAX } else { 0 });
        for (tenant, file) in one.into_iter().chain(all) {
            let since = file.head.seq.saturating_sub(file.checkpointed);
            if since == 0 || (!tick && since < every) {
                continue;
            }
            let mut event =
                AuditEvent::new(crate::event::EventKind::Periodic, tenant, "checkpoint");
            event.proxy = self.options.instance.clone();
            event.checkpoint = Some(signer.sign(tenant, &file.head));
            match Job::new(event, None) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::error!(error = %e, "audit spool: cannot encode a checkpoint"),
            }
        }
        if jobs.is_empty() {
            return;
        }
        // One write per stream, so that each checkpoint signs the head it follows.
        let written = self.write(jobs);
        for (tenant, _, seq) in &written {
            if let Some(file) = self.files.get_mut(tenant) {
                file.checkpointed = *seq;
            }
        }
        self.sync(written);
    }

    /// Appends a batch to the tenants' files (not yet synced); returns each written job with
    /// its tenant and `seq`. Jobs that fail are answered here.
    fn write(&mut self, batch: Vec<Job>) -> Vec<(String, Job, u64)> {
        let mut groups: Vec<(String, Vec<Job>)> = Vec::new();
        for job in batch {
            match groups.iter_mut().find(|(tenant, _)| *tenant == job.tenant) {
                Some((_, jobs)) => jobs.push(job),
                None => groups.push((job.tenant.clone(), vec![job])),
            }
        }
        let mut written = Vec::new();
        for (tenant, jobs) in groups {
            let feeding = self.tenants.feeding(&tenant);
            let mut fed = Vec::new();
            let file = match self.file(&tenant) {
                Ok(file) => file,
                Err(error) => {
                    answer_all(jobs, &error);
                    continue;
                }
            };
            // The head moves in this copy; it is kept only if the write succeeds.
            let mut head = file.head;
            let mut lines = Vec::with_capacity(jobs.iter().map(|j| j.canonical.len() + 180).sum());
            let mut appended = Vec::with_capacity(jobs.len());
            // Where each record ends in `lines`, when a reader takes them from a feed.
            let mut ends = Vec::new();
            for job in jobs {
                head.append_canonical(&job.canonical, &mut lines);
                appended.push((job, head.seq));
                if feeding {
                    ends.push(lines.len());
                }
            }
            match file.file.write_all(&lines) {
                Ok(()) => {
                    if file.first_seq == 0 {
                        file.first_seq = appended.first().map_or(0, |(_, seq)| *seq);
                    }
                    if feeding {
                        fed = fed_records(&lines, &ends, &mut appended, file.bytes, file.first_seq);
                    }
                    file.bytes += lines.len() as u64;
                    file.head = head;
                    written
                        .extend(appended.into_iter().map(|(job, seq)| (tenant.clone(), job, seq)));
                }
                Err(e) => {
                    let error = io_error(&file.path, &e);
                    answer_all(appended.into_iter().map(|(job, _)| job), &error);
                    // Reopened on next use: recovery cuts a partly written record.
                    self.files.remove(&tenant);
                }
            }
            if !fed.is_empty() {
                self.unsynced_feed.push((tenant, fed));
            }
        }
        written
    }

    /// Syncs every file the jobs were written to, once each, then answers the jobs.
    fn sync(&mut self, written: Vec<(String, Job, u64)>) {
        let mut outcomes: HashMap<String, Result<(), SpoolError>> = HashMap::new();
        for (tenant, _, _) in &written {
            if outcomes.contains_key(tenant) {
                continue;
            }
            let synced = match self.files.get(tenant) {
                Some(file) if self.options.sync => {
                    file.file.sync_data().map_err(|e| io_error(&file.path, &e))
                }
                Some(_) => Ok(()),
                None => Err(SpoolError::Closed),
            };
            if synced.is_err() {
                // After a failed sync the file's state is unknown: read it again.
                self.files.remove(tenant);
            }
            outcomes.insert(tenant.clone(), synced);
        }
        // Feeds first, so that a reader woken by the new synced `seq` finds the records there.
        for (tenant, fed) in std::mem::take(&mut self.unsynced_feed) {
            if matches!(outcomes.get(&tenant), Some(Ok(()))) {
                self.tenants.feed(&tenant, fed);
            }
        }
        for (tenant, outcome) in &outcomes {
            if let (Ok(()), Some(file)) = (outcome, self.files.get(tenant)) {
                self.tenants.set_synced(tenant, file.head.seq);
                if file.bytes >= self.options.segment_bytes {
                    self.rotate(tenant);
                }
            }
        }
        for (tenant, job, seq) in written {
            let answer = match outcomes.get(&tenant) {
                Some(Ok(())) => Ok(seq),
                Some(Err(error)) => Err(error.clone()),
                None => Err(SpoolError::Closed),
            };
            job.answer(answer);
        }
    }

    /// Closes `tenant`'s file as a segment and begins a new one; then deletes what every
    /// reader has acknowledged. A failure is logged: the file just goes on growing.
    fn rotate(&mut self, tenant: &str) {
        let Some(file) = self.files.get_mut(tenant) else { return };
        let segment = segment_path(&file.path, file.first_seq);
        let rotated = std::fs::rename(&file.path, &segment)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| io_error(&segment, &e))
            .and_then(|()| create_file(&file.path));
        match rotated {
            Ok(new) => {
                file.file = new;
                file.first_seq = 0;
                file.bytes = 0;
            }
            Err(error) => {
                tracing::error!(%error, "audit spool: cannot begin a new segment");
                // Reopened (and its head found again) on next use.
                self.files.remove(tenant);
                return;
            }
        }
        self.prune(tenant);
    }

    /// Deletes `tenant`'s segments whose every record all its readers have acknowledged.
    fn prune(&self, tenant: &str) {
        if !self.options.delete_delivered {
            return;
        }
        let (Some(acknowledged), Some(file)) =
            (self.tenants.acknowledged(tenant), self.files.get(tenant))
        else {
            return;
        };
        let segments = segments(&file.path);
        let next_firsts = segments.iter().skip(1).map(|(first, _)| *first).chain(std::iter::once(
            if file.first_seq > 0 { file.first_seq } else { file.head.seq + 1 },
        ));
        for ((_, path), next_first) in segments.iter().zip(next_firsts) {
            if next_first.saturating_sub(1) > acknowledged {
                break;
            }
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "audit spool: cannot delete a delivered segment");
                break;
            }
        }
    }

    fn file(&mut self, tenant: &str) -> Result<&mut TenantFile, SpoolError> {
        if !self.files.contains_key(tenant) {
            let (opened, _) = open_tenant_file(&tenant_file(&self.dir, tenant))?;
            self.files.insert(tenant.to_owned(), opened);
        }
        self.files.get_mut(tenant).ok_or(SpoolError::Closed)
    }
}

/// The records just written as `lines` (each ending at its entry of `ends`), for feeds: the
/// file held `file_bytes` before them, and its first record is `file_first`.
fn fed_records(
    lines: &[u8],
    ends: &[usize],
    appended: &mut [(Job, u64)],
    file_bytes: u64,
    file_first: u64,
) -> Vec<Fed> {
    let mut fed = Vec::with_capacity(ends.len());
    let mut start = 0;
    for (&end, (job, seq)) in ends.iter().zip(appended.iter_mut()) {
        // Without its newline; always UTF-8 (JSON that `append_canonical` made).
        let line = lines.get(start..end.saturating_sub(1)).unwrap_or_default();
        let Ok(line) = String::from_utf8(line.to_vec()) else { return Vec::new() };
        fed.push(Fed {
            record: Outgoing {
                seq: *seq,
                line,
                // Taken: only the answer is left to do with the job.
                id: std::mem::take(&mut job.light.id),
                time: std::mem::take(&mut job.light.time),
                outcome: std::mem::take(&mut job.light.outcome),
            },
            offset: file_bytes + end as u64,
            file_first,
        });
        start = end;
    }
    fed
}

/// Moves the jobs waiting in the queue into `batch`, up to [`MAX_BATCH`] (noting a tick, and
/// who asked for a seal).
fn drain(
    jobs: &mut tokio::sync::mpsc::Receiver<Message>,
    batch: &mut Vec<Job>,
    tick: &mut bool,
    seals: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) {
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(Message::Append(job)) => batch.push(job),
            Ok(Message::Tick) => *tick = true,
            Ok(Message::Seal(answer)) => {
                *tick = true;
                seals.push(answer);
            }
            Err(_) => break,
        }
    }
}

fn answer_all(jobs: impl IntoIterator<Item = Job>, error: &SpoolError) {
    for job in jobs {
        job.answer(Err(error.clone()));
    }
}

/// Opens a tenant's file and repairs its end; also returns the tenant its last record names.
fn open_tenant_file(path: &Path) -> Result<(TenantFile, Option<String>), SpoolError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| io_error(path, &e))?;
    let (mut head, mut tenant, mut checkpointed) = recover(&mut file, path)?;
    let bytes = file.metadata().map_err(|e| io_error(path, &e))?.len();
    let first_seq = if bytes == 0 {
        // A new file after a rotation: the chain goes on from the last segment.
        if let Some((_, last)) = segments(path).pop() {
            let mut segment = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last)
                .map_err(|e| io_error(&last, &e))?;
            (head, tenant, checkpointed) = recover(&mut segment, &last)?;
        }
        0
    } else {
        first_record_seq(path)?
    };
    Ok((TenantFile { file, path: path.to_owned(), head, checkpointed, first_seq, bytes }, tenant))
}

fn create_file(path: &Path) -> Result<File, SpoolError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| io_error(path, &e))
}

/// Finds the chain head at the end of `file` (and the tenant of its last record), first cutting
/// off a record left incomplete by a crash.
/// Also returns up to where the stream is checkpointed (its last seq if the last record is a
/// checkpoint, else 0: the next tick adds one).
fn recover(file: &mut File, path: &Path) -> Result<(ChainHead, Option<String>, u64), SpoolError> {
    let len = file.metadata().map_err(|e| io_error(path, &e))?.len();
    if len == 0 {
        return Ok((ChainHead::default(), None, 0));
    }
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        let mut tail = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
        file.seek(SeekFrom::Start(start)).map_err(|e| io_error(path, &e))?;
        file.read_to_end(&mut tail).map_err(|e| io_error(path, &e))?;
        // Everything after the last newline is an incomplete record: never answered, cut it.
        let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                file.set_len(0).map_err(|e| io_error(path, &e))?;
                return Ok((ChainHead::default(), None, 0));
            }
            window *= 4;
            continue;
        };
        let complete = start + end as u64 + 1;
        if complete < len {
            file.set_len(complete).map_err(|e| io_error(path, &e))?;
            file.sync_data().map_err(|e| io_error(path, &e))?;
        }
        let body = tail.get(..end).unwrap_or_default();
        let line_start = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if start == 0 => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        let corrupt = |reason: String| SpoolError::Corrupt { path: path.to_owned(), reason };
        let record: Record = serde_json::from_slice(body.get(line_start..).unwrap_or_default())
            .map_err(|e| corrupt(e.to_string()))?;
        let head = ChainHead::after(&record).ok_or_else(|| corrupt("bad hash".into()))?;
        let tenant = record.event.get("tenant").and_then(|t| t.as_str()).map(str::to_owned);
        let checkpointed = if record.event.get("checkpoint").is_some() { head.seq } else { 0 };
        return Ok((head, tenant, checkpointed));
    }
}

fn create_private_dir(dir: &Path) -> Result<(), SpoolError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| io_error(dir, &e))
}

fn io_error(path: &Path, error: &std::io::Error) -> SpoolError {
    SpoolError::Io { path: path.to_owned(), reason: error.to_string() }
}

/// A reader is alive while its delivery task (or anyone but the spool) holds its counter: a
/// sink removed from the configuration stops counting in backlogs and retention.
fn reader_alive(counter: &Arc<std::sync::atomic::AtomicU64>) -> bool {
    Arc::strong_count(counter) > 1
}

/// A feed is fed while its reader holds it.
fn feed_alive(feed: &Arc<Feed>) -> bool {
    Arc::strong_count(feed) > 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::verify;
    use crate::event::EventKind;

    fn fed(seq: u64) -> Fed {
        Fed {
            record: Outgoing {
                seq,
                line: format!("line {seq}"),
                id: String::new(),
                time: String::new(),
                outcome: String::new(),
            },
            offset: seq * 10,
            file_first: 1,
        }
    }

    fn seqs(fed: &[Fed]) -> Vec<u64> {
        fed.iter().map(|f| f.record.seq).collect()
    }

    #[test]
    fn a_feed_gives_only_what_follows_on_without_a_gap() {
        let feed = Feed::new(6);
        feed.push(vec![fed(3), fed(4), fed(5)]);
        // The reader is at 1: record 2 is not here, so it reads the file.
        assert!(feed.take(1, 10).is_empty());
        // At 3: 3 is dropped (it has it), 4 and 5 follow on; at most `most`.
        assert_eq!(seqs(&feed.take(3, 1)), vec![4]);
        assert_eq!(seqs(&feed.take(4, 10)), vec![5]);
        // A gap (7 was not fed): the take stops before it.
        feed.push(vec![fed(6), fed(8)]);
        assert_eq!(seqs(&feed.take(5, 10)), vec![6]);
        assert!(feed.take(6, 10).is_empty());
        // All or nothing when full.
        feed.push(vec![fed(9), fed(10), fed(11), fed(12), fed(13), fed(14)]);
        assert_eq!(seqs(&feed.take(7, 10)), vec![8]);
        feed.push(vec![fed(9), fed(10), fed(11), fed(12), fed(13), fed(14)]);
        assert_eq!(seqs(&feed.take(8, 10)), (9..=14).collect::<Vec<_>>());
        // Paused: emptied, and nothing is added until it resumes.
        feed.push(vec![fed(15)]);
        feed.pause();
        feed.push(vec![fed(16)]);
        assert!(feed.take(14, 10).is_empty());
        feed.resume();
        feed.push(vec![fed(17)]);
        assert!(feed.take(14, 10).is_empty());
        assert_eq!(seqs(&feed.take(16, 10)), vec![17]);
    }

    #[tokio::test]
    async fn feeds_get_synced_records_only_while_their_reader_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64).unwrap();
        spool.append(event("acme", 0)).await.unwrap();
        let feed = spool.feed("acme", 100);
        for i in 1..=3 {
            spool.append(event("acme", i)).await.unwrap();
        }
        spool.append(event("other", 0)).await.unwrap();
        let got = feed.take(1, 10);
        assert_eq!(seqs(&got), vec![2, 3, 4]);
        // Each is its line in the file, at its offset.
        let text = std::fs::read_to_string(spool.tenant_file("acme")).unwrap();
        for f in &got {
            let end = usize::try_from(f.offset).unwrap();
            let line = text[..end - 1].rsplit('\n').next().unwrap();
            assert_eq!(f.record, Outgoing::parse(line.to_owned()).unwrap());
            assert_eq!(f.file_first, 1);
        }
        // Once its reader lets go, the writer makes no records for it.
        drop(feed);
        assert!(!spool.tenants.feeding("acme"));
    }

    fn event(tenant: &str, i: usize) -> AuditEvent {
        let mut e = AuditEvent::new(EventKind::Data, tenant, "wrap");
        e.request_id = format!("req-{i}");
        e
    }

    fn verified(path: &Path) -> u64 {
        verify(std::io::BufReader::new(File::open(path).unwrap()), false).unwrap().records
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_land_in_one_chain_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1024).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..400 {
            let spool = Arc::clone(&spool);
            let tenant = if i % 2 == 0 { "acme" } else { "tenant with spaces/and slashes" };
            tasks.spawn(async move { spool.append(event(tenant, i)).await.unwrap() });
        }
        let mut seqs = Vec::new();
        while let Some(seq) = tasks.join_next().await {
            seqs.push(seq.unwrap());
        }
        seqs.sort_unstable();
        // Two chains of 200: each seq twice.
        assert_eq!(seqs, (1..=200).flat_map(|s| [s, s]).collect::<Vec<_>>());
        assert_eq!(verified(&spool.tenant_file("acme")), 200);
        let odd = spool.tenant_file("tenant with spaces/and slashes");
        assert!(odd.file_name().unwrap().to_str().unwrap().starts_with("t-"));
        assert_eq!(verified(&odd), 200);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(spool.tenant_file("acme")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn a_reopened_spool_continues_the_chain_and_cuts_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let spool = Spool::open(dir.path(), 16).unwrap();
            for i in 0..3 {
                spool.append(event("acme", i)).await.unwrap();
            }
            spool.tenant_file("acme")
        };
        // A crash in the middle of writing record 4.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"seq":4,"prev":"ab"#).unwrap();
        drop(file);
        let spool = Spool::open(dir.path(), 16).unwrap();
        assert_eq!(spool.append(event("acme", 3)).await.unwrap(), 4);
        assert_eq!(verified(&path), 4);
    }

    /// Without syncs (`durability = "written"`), an answered event is already in its file (so
    /// a crash of the process cannot lose it), and concurrent appends still form one chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_syncs_an_answered_event_is_already_in_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = SpoolOptions::new(64);
        options.sync = false;
        let spool = Spool::open_with(dir.path(), options).unwrap();
        let path = spool.tenant_file("acme");
        let mut appends = tokio::task::JoinSet::new();
        for task in 0..8 {
            let spool = Arc::clone(&spool);
            let path = path.clone();
            appends.spawn(async move {
                for i in 0..20 {
                    let seq = spool.append(event("acme", task * 100 + i)).await.unwrap();
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(
                        text.lines().any(|l| l.starts_with(&format!("{{\"seq\":{seq},"))),
                        "record {seq} answered but not in the file"
                    );
                }
            });
        }
        while let Some(done) = appends.join_next().await {
            done.unwrap();
        }
        assert_eq!(verified(&path), 160);
    }

    #[tokio::test]
    async fn a_seal_signs_every_stream_end_at_once_and_only_those_with_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(CheckpointSigner::load_or_create(&dir.path().join("k")).unwrap());
        let public = hex::decode(signer.public_key_hex()).unwrap();
        for sync in [true, false] {
            let mut options = SpoolOptions::new(64);
            options.signer = Some(Arc::clone(&signer));
            // No checkpoint by count or by time during the test: only the seal writes one.
            options.checkpoint_every = 1000;
            options.checkpoint_interval = std::time::Duration::from_secs(3600);
            options.sync = sync;
            let spool =
                Spool::open_with(&dir.path().join(format!("spool-{sync}")), options).unwrap();
            for i in 0..3 {
                spool.append(event("acme", i)).await.unwrap();
            }
            spool.append(event("globex", 0)).await.unwrap();
            let ends_signed = |tenant: &str| {
                let text = std::fs::read_to_string(spool.tenant_file(tenant)).unwrap();
                let mut verifier =
                    crate::chain::Verifier::new(false).with_public_key(public.clone());
                for line in text.lines() {
                    verifier.push(&serde_json::from_str(line).unwrap()).unwrap();
                }
                let verified = verifier.finish();
                (verified.checkpoints, verified.last_signed + 1 == verified.head.seq)
            };
            assert_eq!(ends_signed("acme"), (0, false));
            spool.seal().await.unwrap();
            // On disk when the seal returns, one checkpoint per stream, signing its last record.
            assert_eq!(ends_signed("acme"), (1, true), "sync {sync}");
            assert_eq!(ends_signed("globex"), (1, true), "sync {sync}");
            // A stream already signed to its end gets no second checkpoint.
            spool.append(event("globex", 1)).await.unwrap();
            spool.seal().await.unwrap();
            assert_eq!(ends_signed("acme"), (1, true));
            assert_eq!(ends_signed("globex"), (2, true));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_get_signed_checkpoints_by_count_and_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(CheckpointSigner::load_or_create(&dir.path().join("k")).unwrap());
        let public = hex::decode(signer.public_key_hex()).unwrap();
        let mut options = SpoolOptions::new(64);
        options.signer = Some(Arc::clone(&signer));
        options.checkpoint_every = 10;
        options.checkpoint_interval = std::time::Duration::from_millis(200);
        options.instance = "p1".into();
        let spool = Spool::open_with(&dir.path().join("spool"), options).unwrap();
        for i in 0..25 {
            spool.append(event("acme", i)).await.unwrap();
        }
        // The 5 records after the second count checkpoint get one on the next tick.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let path = spool.tenant_file("acme");
        let text = std::fs::read_to_string(&path).unwrap();
        let check = |text: &str| {
            let mut verifier = crate::chain::Verifier::new(false).with_public_key(public.clone());
            for line in text.lines() {
                verifier.push(&serde_json::from_str(line).unwrap())?;
            }
            Ok::<_, crate::chain::Problem>(verifier.finish())
        };
        let verified = check(&text).unwrap();
        assert_eq!((verified.records, verified.checkpoints), (28, 3), "{text}");
        // The stream ends in a checkpoint: nothing after the last signed record but it.
        assert_eq!(verified.last_signed + 1, verified.head.seq);
        let last: Record = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last.event["operation"], "checkpoint");
        assert_eq!(last.event["proxy"], "p1");
        // Cutting off the end is visible: the last checkpoint moves back.
        let cut: String = text.lines().take(20).map(|l| format!("{l}\n")).collect();
        assert_eq!(check(&cut).unwrap().last_signed, 10);
        // A checkpoint re-signed with another key is refused.
        let other = CheckpointSigner::load_or_create(&dir.path().join("other")).unwrap();
        let mut forged: Record = serde_json::from_str(text.lines().nth(10).unwrap()).unwrap();
        let head =
            ChainHead { seq: 10, hash: hex::decode(&forged.prev).unwrap().try_into().unwrap() };
        forged.event["checkpoint"] = serde_json::to_value(other.sign("acme", &head)).unwrap();
        let forged_hash = crate::chain::link_hash(&head.hash, 11, &forged.event);
        forged.hash = hex::encode(forged_hash);
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[10] = serde_json::to_string(&forged).unwrap();
        let err = check(&lines[..11].join("\n")).unwrap_err();
        assert!(matches!(err, crate::chain::Problem::BadCheckpoint { seq: 11, .. }), "{err}");
        // Reopened after a clean stop, the stream needs no new checkpoint; new records do.
        drop(spool);
        let mut options = SpoolOptions::new(64);
        options.signer = Some(signer);
        options.checkpoint_interval = std::time::Duration::from_millis(100);
        let spool = Spool::open_with(&dir.path().join("spool"), options).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(check(&std::fs::read_to_string(&path).unwrap()).unwrap().records, 28);
        spool.append(event("acme", 99)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let verified = check(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!((verified.records, verified.last_signed), (30, 29));
    }

    /// Without syncs each caller writes its own event: checkpoints by count are made on the
    /// way, and the writer thread still makes those that come due by time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_syncs_streams_still_get_checkpoints_by_count_and_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(CheckpointSigner::load_or_create(&dir.path().join("k")).unwrap());
        let public = hex::decode(signer.public_key_hex()).unwrap();
        let mut options = SpoolOptions::new(64);
        options.sync = false;
        options.signer = Some(signer);
        options.checkpoint_every = 10;
        options.checkpoint_interval = std::time::Duration::from_millis(200);
        let spool = Spool::open_with(&dir.path().join("spool"), options).unwrap();
        let mut appends = tokio::task::JoinSet::new();
        for task in 0..5 {
            let spool = Arc::clone(&spool);
            appends.spawn(async move {
                for i in 0..5 {
                    spool.append(event("acme", task * 10 + i)).await.unwrap();
                }
            });
        }
        while let Some(done) = appends.join_next().await {
            done.unwrap();
        }
        let text = std::fs::read_to_string(spool.tenant_file("acme")).unwrap();
        assert_eq!(text.lines().count(), 27, "two count checkpoints before the tick: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let text = std::fs::read_to_string(spool.tenant_file("acme")).unwrap();
        let mut verifier = crate::chain::Verifier::new(false).with_public_key(public);
        for line in text.lines() {
            verifier.push(&serde_json::from_str(line).unwrap()).unwrap();
        }
        let verified = verifier.finish();
        assert_eq!((verified.records, verified.checkpoints), (28, 3), "{text}");
        assert_eq!(verified.last_signed + 1, verified.head.seq);
    }

    #[tokio::test]
    async fn a_spool_that_ends_in_garbage_is_not_extended() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 16).unwrap();
        std::fs::write(spool.tenant_file("acme"), b"this is not a record\n").unwrap();
        let err = spool.append(event("acme", 0)).await.unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
        // Other tenants are not affected.
        assert_eq!(spool.append(event("other", 0)).await.unwrap(), 1);
    }
}
