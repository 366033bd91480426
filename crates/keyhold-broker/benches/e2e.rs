//! End-to-end encryption through the broker (issue 9, docs/e2e-api.md): what the service costs
//! on its real HTTP API, on loopback, with a real database: a SQLite file always, and a fresh
//! PostgreSQL database too when `KEYHOLD_TEST_POSTGRES_URL` is set (as the broker's tests).
//! keyhold-e2e's own bench measures the cryptography alone, on its in-memory model.
//!
//! `cargo bench -p keyhold-broker --bench e2e` (filter with e.g. `-- sqlite` or `-- add_member`).
//! Benchmark ids are `<what>/<database>/<parameter>`:
//!
//! | id | one iteration |
//! |---|---|
//! | `add_member/{db}/{10,1000,100000}` | a signed `PUT /groups/{g}/members/{user}` with a prepared transform key **and** the `DELETE` of the same member (so every iteration starts from N members): the server's two round trips; the requests are signed before the clock starts |
//! | `add_member_admin_device/{db}/{N}` | the admin device's side: sign and send `GET /groups/{g}/key` (the server transforms the sealed group key to the device and records an event), open it, `pre::transform_key` group → new member |
//! | `decrypt/{db}/{direct,via_group}` | a signed `POST /documents/{d}/decrypt` of a 1 KiB document by a member of a group of 1,000 (direct: the reader's own grant, one transform user → device; via_group: the group's grant, two transforms group → user → device), body read, not parsed; signed before the clock starts |
//! | `device_open/{db}/{direct,via_group}` | the reader device's side of that answer: `DecryptGrant::try_from(&DecryptResponse)` and `.open(&device_keys)` (certificate and document signatures, pairing, AES-GCM) |
//! | `encrypt_to_group/{db}/1KiB` | the author device's `document::encrypt` of 1 KiB to the group's public key (fetched once before) and the signed `POST /documents` storing it with its grant, a new document id each time |
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keyhold_broker::{Broker, BrokerConfig};
use keyhold_core::seal::FleetSecretKey;
use keyhold_e2e::wire::{
    self, AddMember, AuthorizeDevice, CertificateView, CreateDocument, CreateGroup, CreateUser,
    DecryptResponse, GroupKey,
};
use keyhold_e2e::{
    DecryptGrant, DeviceCertificate, DeviceKeys, KeySealedToPublicKey, OsRng, PassphraseCost,
    PassphraseSealedKey, PrivateKey, PublicKey, Recipient, SignedGroupKey, SignedUserKeys,
    TransformKey, UserKeys, document, pre,
};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Executor as _;
use tokio::runtime::Runtime;

const VENDOR_KEY: &str = "vendor-key-0123456789abcdef";
const PROXY_TOKEN: &str = "proxy-token-0123456789abcdef";
const TENANT: &str = "acme";
/// Cheap Argon2 for the bench's users (their passphrase is never used here).
const CHEAP: PassphraseCost = PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };
/// The group sizes of `add_member`.
const SIZES: [usize; 3] = [10, 1_000, 100_000];
/// The size of the group the decrypts go through.
const READERS: usize = 1_000;
/// Rows per multi-row INSERT of the bulk setup.
const CHUNK: usize = 1_000;
/// A 1 KiB document.
const BODY: [u8; 1024] = [7u8; 1024];

// ---- a database and a broker (as tests/common/mod.rs) -------------------------------------------

/// A fresh database.
struct Db {
    url: String,
    name: &'static str,
    /// For PostgreSQL: the server's admin URL and the database's name (dropped at the end).
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// SQLite in a temporary file, and PostgreSQL (a fresh database) when configured.
async fn databases() -> Vec<Db> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("broker.db").display());
    let mut dbs = vec![Db { url, name: "sqlite", postgres: None, _dir: Some(dir) }];
    if let Ok(admin) = std::env::var("KEYHOLD_TEST_POSTGRES_URL")
        && !admin.is_empty()
    {
        sqlx::any::install_default_drivers();
        let db = format!("keyhold_bench_{}", random_suffix());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
        conn.execute(format!("CREATE DATABASE {db}").as_str()).await.unwrap();
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b.to_owned(), format!("?{q}")),
            None => (admin.clone(), String::new()),
        };
        let base = base.rsplit_once('/').map(|(head, _)| head.to_owned()).unwrap();
        dbs.push(Db {
            url: format!("{base}/{db}{query}"),
            name: "postgres",
            postgres: Some((admin, db)),
            _dir: None,
        });
    }
    dbs
}

impl Db {
    /// Drops a PostgreSQL database (the SQLite file goes with its directory).
    async fn drop_database(&self) {
        if let Some((admin, db)) = &self.postgres {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(admin).await.unwrap();
            conn.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
                .await
                .unwrap();
        }
    }
}

/// A running broker on a loopback port.
struct TestBroker {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    async fn start(db: &Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vendor"), format!("{VENDOR_KEY}\n")).unwrap();
        std::fs::write(dir.path().join("proxy"), PROXY_TOKEN).unwrap();
        let fleet = FleetSecretKey::generate().unwrap();
        let mut config = BrokerConfig::new(
            dir.path().join("signing.key"),
            dir.path().join("vendor"),
            dir.path().join("proxy"),
        );
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database_url = db.url.clone();
        config.fleet_public_keys = vec![fleet.public_key().to_base64()];
        let broker = Broker::bind(&config).await.unwrap();
        let addr = broker.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            broker
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

// ---- requests (as tests/common/e2e.rs) ----------------------------------------------------------

/// `/api/v1/e2e/tenants/acme{tail}` (the bench's ids need no percent-encoding).
fn route(tail: &str) -> String {
    format!("/api/v1/e2e/tenants/{TENANT}{tail}")
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    )
    .unwrap()
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap()
}

/// An authorized device of a user.
struct Device {
    user: String,
    id: String,
    keys: DeviceKeys,
}

impl TestBroker {
    /// A request with the vendor key; its status and JSON body.
    async fn vendor(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(VENDOR_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A request signed by `device`, now: ready to send.
    fn signed(
        &self,
        device: &Device,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Request {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let h = wire::sign_request(
            &device.keys,
            TENANT,
            &device.user,
            &device.id,
            method.as_str(),
            path,
            unix_now(),
            &bytes,
        );
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(wire::USER_HEADER, h.user)
            .header(wire::DEVICE_HEADER, h.device)
            .header(wire::TIMESTAMP_HEADER, h.timestamp.to_string())
            .header(wire::SIGNATURE_HEADER, h.signature);
        if !bytes.is_empty() {
            r = r.header("content-type", "application/json");
        }
        r.body(bytes).build().unwrap()
    }

    /// Sends a prepared request; its status and body bytes.
    async fn send(&self, request: reqwest::Request) -> (u16, Vec<u8>) {
        let r = self.http.execute(request).await.unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    }

    /// Signs and sends; the status and JSON body, which must be `want`.
    async fn call(
        &self,
        device: &Device,
        method: Method,
        path: &str,
        body: Option<&Value>,
        want: u16,
    ) -> Value {
        let (status, bytes) = self.send(self.signed(device, method, path, body)).await;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, want, "{path}: {body}");
        body
    }

    /// Creates a user (vendor route) with a first device `laptop`.
    async fn user(&self, id: &str) -> (UserKeys, Device) {
        let keys = UserKeys::generate(&mut OsRng);
        let sealed = PassphraseSealedKey::seal(&keys, b"passphrase", CHEAP, &mut OsRng).unwrap();
        let key_signature = SignedUserKeys::issue(&keys, TENANT, id).signature().to_vec();
        let body =
            to_json(&CreateUser { user: id.into(), sealed_keys: sealed.to_bytes(), key_signature });
        let (status, resp) = self.vendor(&route("/users"), &body).await;
        assert_eq!(status, 201, "{resp}");
        let device = DeviceKeys::generate(&mut OsRng);
        let cert = DeviceCertificate::issue(&keys, id, "laptop", device.public());
        let tk = pre::transform_key(keys.encryption_key(), &device.public().encryption, &mut OsRng);
        let body = to_json(&AuthorizeDevice {
            certificate: CertificateView::from(&cert),
            transform_key: tk.to_bytes(),
        });
        let (status, resp) = self.vendor(&route(&format!("/users/{id}/devices")), &body).await;
        assert_eq!(status, 201, "{resp}");
        (keys, Device { user: id.into(), id: "laptop".into(), keys: device })
    }

    /// `POST /groups` by `admin`'s device (a member too with `creator_member`); the group's key.
    async fn group(
        &self,
        admin: &Device,
        admin_keys: &UserKeys,
        id: &str,
        creator_member: bool,
    ) -> PrivateKey {
        let group_key = PrivateKey::generate(&mut OsRng);
        let admin_public = admin_keys.public().encryption;
        let sealed = KeySealedToPublicKey::seal(&group_key, &admin_public, &mut OsRng).unwrap();
        let membership = creator_member
            .then(|| pre::transform_key(&group_key, &admin_public, &mut OsRng).to_bytes());
        let public_key = group_key.public_key();
        let signed =
            SignedGroupKey::issue(&admin.keys, TENANT, id, public_key, &admin.user, &admin.id);
        let body = to_json(&CreateGroup {
            group: id.into(),
            public_key: public_key.to_bytes().to_vec(),
            sealed_for_creator: sealed.to_bytes(),
            creator_membership: membership,
            key_signature: signed.signature().to_vec(),
        });
        self.call(admin, Method::POST, &route("/groups"), Some(&body), 201).await;
        group_key
    }

    /// Encrypts 1 KiB on `author` to `to` and stores it (`POST /documents`).
    async fn document(&self, author: &Device, id: &str, to: &[(Recipient, PublicKey)]) {
        let (doc, grants) = document::encrypt(id, &BODY, &author.keys, to, &mut OsRng).unwrap();
        let body = to_json(&CreateDocument {
            document: doc.to_bytes(),
            grants: grants.iter().map(keyhold_e2e::Grant::to_bytes).collect(),
        });
        self.call(author, Method::POST, &route("/documents"), Some(&body), 201).await;
    }
}

// ---- bulk members, straight into the database ---------------------------------------------------

/// The id of bulk member `i`.
fn bulk_id(i: usize) -> String {
    format!("m{i:06}")
}

/// Runs `rows` as multi-row INSERTs of [`CHUNK`] rows (values are base64 and plain ids: no
/// quoting needed), as unprepared statements.
async fn insert_rows(tx: &mut sqlx::AnyConnection, head: &str, rows: impl Iterator<Item = String>) {
    let rows: Vec<String> = rows.collect();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!("{head} VALUES {}", chunk.join(","));
        sqlx::raw_sql(&sql).execute(&mut *tx).await.unwrap();
    }
}

/// The bench's world: a tenant, its admin, groups of 10, 1,000 and 100,000 members, a group of
/// 1,000 with a reader, and documents for it.
struct World {
    b: TestBroker,
    admin: Device,
    reader: Device,
    /// Per size: the group's id and the prepared transform key group → newcomer.
    sized: Vec<(usize, String, TransformKey)>,
    newcomer_key: PublicKey,
    readers_key: PublicKey,
}

impl World {
    async fn setup(db: &Db) -> Self {
        let started = Instant::now();
        let b = TestBroker::start(db).await;
        let (status, body) =
            b.vendor("/api/v1/tenants", &json!({"id": TENANT, "vendor_key": false})).await;
        assert_eq!(status, 201, "{body}");
        let (admin_keys, admin) = b.user("admin").await;
        let (reader_keys, reader) = b.user("reader").await;
        let (newcomer_keys, _) = b.user("newcomer").await;
        let newcomer_key = newcomer_keys.public().encryption;

        let mut sized = Vec::new();
        let mut bulk = Vec::new();
        for size in SIZES {
            let id = format!("size-{size}");
            let key = b.group(&admin, &admin_keys, &id, false).await;
            let to_newcomer = pre::transform_key(&key, &newcomer_key, &mut OsRng);
            bulk.push((id.clone(), key, 0..size));
            sized.push((size, id, to_newcomer));
        }
        // The readers' group: the admin (creator) and the reader (added through the API, with
        // its own key) are members, and 998 bulk members.
        let readers = b.group(&admin, &admin_keys, "readers", true).await;
        let tk = pre::transform_key(&readers, &reader_keys.public().encryption, &mut OsRng);
        let body = to_json(&AddMember { transform_key: tk.to_bytes() });
        b.call(&admin, Method::PUT, &route("/groups/readers/members/reader"), Some(&body), 204)
            .await;
        let readers_key = readers.public_key();
        bulk.push(("readers".into(), readers, 0..READERS - 2));

        // The members of the bulk: rows written directly, one transaction. They all share one
        // user key pair (and so, per group, one valid transform key group → that key), so that
        // 100,000 of them take seconds to make, not hours of pairings. Real members have their
        // own keys, but the service stores one user row and one member row (its own transform
        // key) each all the same, and reads only the rows of the member at hand.
        let member = UserKeys::generate(&mut OsRng);
        let public = member.public();
        let sealed = PassphraseSealedKey::seal(&member, b"passphrase", CHEAP, &mut OsRng).unwrap();
        let (enc, sign, sealed) = (
            STANDARD.encode(public.encryption.to_bytes()),
            STANDARD.encode(public.signing.as_bytes()),
            STANDARD.encode(sealed.to_bytes()),
        );
        sqlx::any::install_default_drivers();
        let pool =
            sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&db.url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let users = SIZES.iter().copied().chain([READERS]).max().unwrap();
        insert_rows(
            &mut tx,
            "INSERT INTO e2e_users (tenant_id, user_id, encryption_key, signing_key, \
             key_signature, sealed_keys, created_at)",
            (0..users).map(|i| {
                let id = bulk_id(i);
                // Each its own statement (it names the user), as the service stores them.
                let statement = SignedUserKeys::issue(&member, TENANT, &id);
                let signature = STANDARD.encode(statement.signature());
                format!(
                    "('{TENANT}','{id}','{enc}','{sign}','{signature}','{sealed}',\
                     '2026-01-01T00:00:00Z')"
                )
            }),
        )
        .await;
        for (group, key, range) in &bulk {
            let tk =
                STANDARD.encode(pre::transform_key(key, &public.encryption, &mut OsRng).to_bytes());
            insert_rows(
                &mut tx,
                "INSERT INTO e2e_group_members (tenant_id, group_id, user_id, transform_key)",
                range.clone().map(|i| format!("('{TENANT}','{group}','{}','{tk}')", bulk_id(i))),
            )
            .await;
        }
        tx.commit().await.unwrap();
        for (group, _, range) in &bulk {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM e2e_group_members WHERE tenant_id = $1 AND group_id = $2",
            )
            .bind(TENANT)
            .bind(group)
            .fetch_one(&pool)
            .await
            .unwrap();
            let want = if group == "readers" { READERS } else { range.len() };
            assert_eq!(usize::try_from(n).unwrap(), want, "{group}");
        }
        pool.close().await;

        // The decrypts' documents: one to the reader itself, one to the readers' group.
        let reader_key = reader_keys.public().encryption;
        b.document(&admin, "doc-direct", &[(Recipient::User("reader".into()), reader_key)]).await;
        b.document(&admin, "doc-group", &[(Recipient::Group("readers".into()), readers_key)]).await;
        eprintln!("{}: set up in {:.1?}", db.name, started.elapsed());
        Self { b, admin, reader, sized, newcomer_key, readers_key }
    }
}

// ---- the benchmarks -----------------------------------------------------------------------------

/// `iters` iterations on the runtime, summing what each iteration's future reports as its own
/// time (so that preparing a request stays off the clock).
fn timed<F, Fut>(rt: &Runtime, iters: u64, mut once: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += once().await;
        }
        total
    })
}

fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g
}

fn add_member(c: &mut Criterion, rt: &Runtime, db: &str, w: &World) {
    let b = &w.b;
    let mut g = group(c, "add_member");
    for (size, id, tk) in &w.sized {
        let path = route(&format!("/groups/{id}/members/newcomer"));
        let body = to_json(&AddMember { transform_key: tk.to_bytes() });
        let (path, body) = (&path, &body);
        g.bench_with_input(BenchmarkId::new(db, size), size, |bench, _| {
            bench.iter_custom(|iters| {
                timed(rt, iters, || async move {
                    let put = b.signed(&w.admin, Method::PUT, path, Some(body));
                    let delete = b.signed(&w.admin, Method::DELETE, path, None);
                    let start = Instant::now();
                    let (added, _) = b.send(put).await;
                    let (removed, _) = b.send(delete).await;
                    let took = start.elapsed();
                    assert_eq!((added, removed), (204, 204));
                    took
                })
            })
        });
    }
    g.finish();

    let mut g = group(c, "add_member_admin_device");
    for (size, id, _) in &w.sized {
        let path = route(&format!("/groups/{id}/key"));
        let path = &path;
        g.bench_with_input(BenchmarkId::new(db, size), size, |bench, _| {
            bench.iter_custom(|iters| {
                timed(rt, iters, || async move {
                    let start = Instant::now();
                    let key = b.call(&w.admin, Method::GET, path, None, 200).await;
                    let key: GroupKey = serde_json::from_value(key).unwrap();
                    let sealed = KeySealedToPublicKey::from_bytes(&key.sealed_group_key).unwrap();
                    let group_key = sealed.open(w.admin.keys.encryption_key()).unwrap();
                    let tk = pre::transform_key(&group_key, &w.newcomer_key, &mut OsRng);
                    let took = start.elapsed();
                    std::hint::black_box(tk);
                    took
                })
            })
        });
    }
    g.finish();
}

fn decrypt(c: &mut Criterion, rt: &Runtime, db: &str, w: &World) {
    let b = &w.b;
    let docs = [("direct", "doc-direct"), ("via_group", "doc-group")];
    let mut answers = Vec::new();
    let mut g = group(c, "decrypt");
    for (name, doc) in docs {
        let path = route(&format!("/documents/{doc}/decrypt"));
        let path_ref = &path;
        g.bench_function(BenchmarkId::new(db, name), |bench| {
            bench.iter_custom(|iters| {
                timed(rt, iters, || async move {
                    let request = b.signed(&w.reader, Method::POST, path_ref, None);
                    let start = Instant::now();
                    let (status, body) = b.send(request).await;
                    let took = start.elapsed();
                    assert_eq!(status, 200);
                    std::hint::black_box(body);
                    took
                })
            })
        });
        let answer = rt.block_on(b.call(&w.reader, Method::POST, &path, None, 200));
        let answer: DecryptResponse = serde_json::from_value(answer).unwrap();
        let via = if name == "via_group" { Some("readers") } else { None };
        assert_eq!(answer.via_group.as_deref(), via);
        answers.push((name, answer));
    }
    g.finish();

    let mut g = group(c, "device_open");
    for (name, answer) in &answers {
        g.bench_function(BenchmarkId::new(db, name), |bench| {
            bench.iter(|| {
                let grant = DecryptGrant::try_from(answer).unwrap();
                let (plain, author) = grant.open(&w.reader.keys).unwrap();
                assert_eq!((plain.len(), author), (BODY.len(), "admin"));
                plain
            })
        });
    }
    g.finish();
}

fn encrypt_to_group(c: &mut Criterion, rt: &Runtime, db: &str, w: &World) {
    let b = &w.b;
    let to = [(Recipient::Group("readers".into()), w.readers_key)];
    let path = route("/documents");
    let mut n = 0u64;
    let mut g = group(c, "encrypt_to_group");
    g.bench_function(BenchmarkId::new(db, "1KiB"), |bench| {
        bench.iter_custom(|iters| {
            timed(rt, iters, || {
                n += 1;
                let id = format!("enc-{n}");
                let (to, path) = (&to, &path);
                async move {
                    let start = Instant::now();
                    let (doc, grants) =
                        document::encrypt(&id, &BODY, &w.admin.keys, to, &mut OsRng).unwrap();
                    let body = to_json(&CreateDocument {
                        document: doc.to_bytes(),
                        grants: grants.iter().map(keyhold_e2e::Grant::to_bytes).collect(),
                    });
                    b.call(&w.admin, Method::POST, path, Some(&body), 201).await;
                    start.elapsed()
                }
            })
        })
    });
    g.finish();
}

fn broker_e2e(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for db in rt.block_on(databases()) {
        let world = rt.block_on(World::setup(&db));
        add_member(c, &rt, db.name, &world);
        decrypt(c, &rt, db.name, &world);
        encrypt_to_group(c, &rt, db.name, &world);
        rt.block_on(async {
            world.b.stop().await;
            db.drop_database().await;
        });
    }
}

criterion_group!(benches, broker_e2e);
criterion_main!(benches);
