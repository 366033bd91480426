//! The per-tenant hash chain that makes a tenant's audit stream tamper-evident.
//!
//! Each record is one JSON line: `{"seq":N,"prev":"<hex>","hash":"<hex>","event":{…}}`, where
//!
//! ```text
//! hash = SHA-256("keyhold/audit-chain/v1\0" ‖ prev ‖ u64be(seq) ‖ canonical(event))
//! ```
//!
//! `prev` is the previous record's `hash` (32 zero bytes for `seq` 1) and `canonical` is the
//! event's JSON with object keys sorted and no whitespace. Changing any event, removing or
//! reordering records, or cutting the middle out of a stream breaks the chain at that record;
//! [`verify`] names it. (Cutting records off the *end* is only visible against a later
//! checkpoint or the receiver's own count: see docs/audit.md.)

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::event::AuditEvent;

/// The `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

const LABEL: &[u8] = b"keyhold/audit-chain/v1\0";

/// One chained record, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the tenant's stream, from 1.
    pub seq: u64,
    /// Hex SHA-256 of the previous record.
    pub prev: String,
    /// Hex SHA-256 of this record.
    pub hash: String,
    /// The event.
    pub event: Value,
}

/// The end of a tenant's chain: what the next record links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The `seq` of the last record (0: none yet).
    pub seq: u64,
    /// The hash of the last record ([`GENESIS`]: none yet).
    pub hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        Self { seq: 0, hash: GENESIS }
    }
}

impl ChainHead {
    /// Links `event` after this head: returns the JSON line (with its newline) and moves the
    /// head to it.
    pub fn append(&mut self, event: &AuditEvent) -> Result<Vec<u8>, serde_json::Error> {
        // An event serializes to its canonical form directly (its fields are declared in key
        // order): one pass, and the same bytes go into the hash and the line.
        let canonical = serde_json::to_vec(event)?;
        let mut line = Vec::with_capacity(canonical.len() + 180);
        self.append_canonical(&canonical, &mut line);
        Ok(line)
    }

    /// Links an event given as its canonical JSON (`serde_json::to_vec` of an
    /// [`AuditEvent`]): appends the record's line (with its newline) to `out` and moves the
    /// head to it. (The spool serializes events before they reach its single writer thread.)
    pub fn append_canonical(&mut self, canonical: &[u8], out: &mut Vec<u8>) {
        let seq = self.seq + 1;
        let hash = hash_canonical(&self.hash, seq, canonical);
        // Hex into a buffer on the stack: `hex::encode` goes char by char into a new String,
        // which was a visible share of the writer thread's time (callgrind).
        let mut hex_buf = [0u8; 64];
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b",\"prev\":\"");
        out.extend_from_slice(hex_of(&self.hash, &mut hex_buf));
        out.extend_from_slice(b"\",\"hash\":\"");
        out.extend_from_slice(hex_of(&hash, &mut hex_buf));
        out.extend_from_slice(b"\",\"event\":");
        out.extend_from_slice(canonical);
        out.extend_from_slice(b"}\n");
        *self = ChainHead { seq, hash };
    }

    /// The head after `record`, if `record` is well formed (for resuming a stream).
    pub fn after(record: &Record) -> Option<Self> {
        Some(Self { seq: record.seq, hash: decode_hash(&record.hash)? })
    }
}

/// `hash` in lower-case hex, written into `buf`.
fn hex_of<'a>(hash: &[u8; 32], buf: &'a mut [u8; 64]) -> &'a [u8] {
    // 32 bytes always fit 64 hex digits: the error case cannot happen.
    match hex::encode_to_slice(hash, buf) {
        Ok(()) => buf,
        Err(_) => &[],
    }
}

pub(crate) fn link_hash(prev: &[u8; 32], seq: u64, event: &Value) -> [u8; 32] {
    let mut canonical = Vec::with_capacity(512);
    write_canonical(event, &mut canonical);
    hash_canonical(prev, seq, &canonical)
}

fn hash_canonical(prev: &[u8; 32], seq: u64, canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(LABEL);
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(canonical);
    hasher.finalize().into()
}

/// JSON with object keys sorted, no whitespace: the same bytes whatever order a receiver (an
/// index, a log shipper) stored the fields in.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// What a verified stream held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Distinct records checked.
    pub records: u64,
    /// Records that repeat one already seen, identical (at-least-once delivery sends some
    /// twice); each was checked too.
    pub duplicates: u64,
    /// The head after the last record.
    pub head: ChainHead,
    /// Checkpoint records seen (their signatures checked when a public key was given).
    pub checkpoints: u64,
    /// The last `seq` a checkpoint signed (0: none).
    pub last_signed: u64,
    /// When that checkpoint was written (its event's time).
    pub last_signed_time: Option<String>,
    /// Whether checkpoint signatures were checked (a public key was given).
    pub signatures_checked: bool,
}

/// Where and how a stream fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct VerifyError {
    /// 1-based line number in the input (for an OpenSearch export: the position after sorting
    /// by `seq`).
    pub line: u64,
    /// What is wrong there.
    pub problem: Problem,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Not a chained record (not JSON, fields missing, bad hex).
    #[error("not a chained audit record: {0}")]
    Malformed(String),
    /// A record is missing before this one (or records were reordered).
    #[error("record {found} follows record {previous}: records are missing or out of order")]
    Gap {
        /// The `seq` of the record before.
        previous: u64,
        /// The `seq` found.
        found: u64,
    },
    /// `prev` is not the previous record's hash: a record before it was removed or replaced.
    #[error("record {seq} does not link to the record before it")]
    BrokenLink {
        /// The record.
        seq: u64,
    },
    /// The record's content does not match its hash: it was altered.
    #[error("record {seq} was altered (its hash does not match its content)")]
    Altered {
        /// The record.
        seq: u64,
    },
    /// A second record with the same `seq` but other content: one of them was forged.
    #[error("record {seq} appears twice with different content")]
    Conflict {
        /// The record.
        seq: u64,
    },
    /// A checkpoint that does not sign the record before it, or whose signature is not the
    /// given key's.
    #[error("record {seq} is a checkpoint that does not verify: {reason}")]
    BadCheckpoint {
        /// The checkpoint record.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// How many recent hashes verification remembers to recognize records delivered twice.
const DUPLICATE_WINDOW: usize = 1 << 20;

/// Checks a stream record by record (see [`verify`]).
#[derive(Debug, Clone)]
pub struct Verifier {
    head: Option<ChainHead>,
    /// Hashes of the records up to `head`, the last one at the back.
    recent: std::collections::VecDeque<[u8; 32]>,
    records: u64,
    duplicates: u64,
    public_keys: Vec<Vec<u8>>,
    checkpoints: u64,
    last_signed: u64,
    last_signed_time: Option<String>,
}

impl Verifier {
    /// A stream that must start at `seq` 1, or, with `from_middle`, anywhere.
    pub fn new(from_middle: bool) -> Self {
        Self {
            head: if from_middle { None } else { Some(ChainHead::default()) },
            recent: std::collections::VecDeque::new(),
            records: 0,
            duplicates: 0,
            public_keys: Vec::new(),
            checkpoints: 0,
            last_signed: 0,
            last_signed_time: None,
        }
    }

    /// Also checks every checkpoint's signature: it must be made by this Ed25519 public key
    /// (or another one given; each proxy has its own).
    pub fn with_public_key(mut self, public_key: Vec<u8>) -> Self {
        self.public_keys.push(public_key);
        self
    }

    /// Checks the next record.
    pub fn push(&mut self, record: &Record) -> Result<(), Problem> {
        let prev = decode_hash(&record.prev)
            .ok_or_else(|| Problem::Malformed("prev is not a 32-byte hex hash".into()))?;
        let stated = decode_hash(&record.hash)
            .ok_or_else(|| Problem::Malformed("hash is not a 32-byte hex hash".into()))?;
        if link_hash(&prev, record.seq, &record.event) != stated {
            return Err(Problem::Altered { seq: record.seq });
        }
        if let Some(head) = self.head {
            if record.seq <= head.seq && record.seq > 0 {
                // Delivered twice? Then it is the very record seen before.
                let back = usize::try_from(head.seq - record.seq).unwrap_or(usize::MAX);
                let seen = self.recent.len().checked_sub(back + 1).and_then(|i| self.recent.get(i));
                return match seen {
                    Some(seen) if *seen == stated => {
                        self.duplicates += 1;
                        Ok(())
                    }
                    Some(_) => Err(Problem::Conflict { seq: record.seq }),
                    None => Err(Problem::Gap { previous: head.seq, found: record.seq }),
                };
            }
            if record.seq != head.seq + 1 {
                return Err(Problem::Gap { previous: head.seq, found: record.seq });
            }
            if prev != head.hash {
                return Err(Problem::BrokenLink { seq: record.seq });
            }
        }
        if let Some(value) = record.event.get("checkpoint") {
            self.check_checkpoint(record, value)?;
        }
        self.head = Some(ChainHead { seq: record.seq, hash: stated });
        if self.recent.len() == DUPLICATE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(stated);
        self.records += 1;
        Ok(())
    }

    fn check_checkpoint(&mut self, record: &Record, value: &Value) -> Result<(), Problem> {
        let bad = |reason: &str| Problem::BadCheckpoint { seq: record.seq, reason: reason.into() };
        let checkpoint: crate::checkpoint::Checkpoint =
            serde_json::from_value(value.clone()).map_err(|e| bad(&e.to_string()))?;
        if checkpoint.signed_seq + 1 != record.seq || checkpoint.signed_hash != record.prev {
            return Err(bad("it does not sign the record before it"));
        }
        if !self.public_keys.is_empty() {
            let tenant = record.event.get("tenant").and_then(Value::as_str).unwrap_or_default();
            let key = self
                .public_keys
                .iter()
                .find(|key| crate::checkpoint::key_id(key) == checkpoint.key_id)
                .ok_or_else(|| bad("signed by another key than those given"))?;
            if !crate::checkpoint::verify_signature(key, tenant, &checkpoint) {
                return Err(bad("the signature is not valid"));
            }
        }
        self.checkpoints += 1;
        self.last_signed = checkpoint.signed_seq;
        self.last_signed_time = record.event.get("time").and_then(Value::as_str).map(str::to_owned);
        Ok(())
    }

    /// What was checked.
    pub fn finish(&self) -> Verified {
        Verified {
            records: self.records,
            duplicates: self.duplicates,
            head: self.head.unwrap_or_default(),
            checkpoints: self.checkpoints,
            last_signed: self.last_signed,
            last_signed_time: self.last_signed_time.clone(),
            signatures_checked: !self.public_keys.is_empty(),
        }
    }
}

/// Checks a stream of chained records, one per line (blank lines are skipped). A stream must
/// start at `seq` 1 unless `from_middle` is set, in which case the first record is taken as is
/// and only the links after it are checked (an export that starts later). A record repeated
/// whole (delivered twice) is counted, not an error.
pub fn verify(input: impl BufRead, from_middle: bool) -> Result<Verified, VerifyError> {
    let mut verifier = Verifier::new(from_middle);
    for (index, line) in input.lines().enumerate() {
        let line_no = index as u64 + 1;
        let fail = |problem| VerifyError { line: line_no, problem };
        let line = line.map_err(|e| fail(Problem::Malformed(e.to_string())))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record =
            serde_json::from_str(&line).map_err(|e| fail(Problem::Malformed(e.to_string())))?;
        verifier.push(&record).map_err(fail)?;
    }
    Ok(verifier.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn stream(n: usize) -> Vec<String> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                let mut event = AuditEvent::new(EventKind::Data, "acme", "wrap");
                event.request_id = format!("req-{i}");
                String::from_utf8(head.append(&event).unwrap()).unwrap()
            })
            .collect()
    }

    fn check(lines: &[String]) -> Result<Verified, VerifyError> {
        verify(lines.concat().as_bytes(), false)
    }

    #[test]
    fn an_event_serializes_to_its_canonical_form() {
        // Every field set, so that each is checked for its place in key order.
        let mut event = AuditEvent::new(EventKind::Data, "acme \"quoted\" é", "wrap");
        event.requesting_id = "alice".into();
        event.data_label = "PII".into();
        event.source_ip = "203.0.113.7".into();
        event.object_id = "doc\n1".into();
        event.request_id = "req-1".into();
        event.custom = [("z".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())].into();
        event.kms_config_id = Some(3);
        event.lease_id = Some(-4);
        event.event_time_millis = Some(u64::MAX);
        event.proxy = "p1".into();
        event.checkpoint = Some(crate::checkpoint::Checkpoint {
            key_id: "k".into(),
            signature: "s".into(),
            signed_hash: "h".into(),
            signed_seq: 9,
        });
        let mut canonical = Vec::new();
        write_canonical(&serde_json::to_value(&event).unwrap(), &mut canonical);
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&event).unwrap()).unwrap(),
            String::from_utf8(canonical).unwrap()
        );
        // And a line made from it verifies and parses back to the event (a checkpoint that
        // signs nothing would not verify).
        event.checkpoint = None;
        let line = ChainHead::default().append(&event).unwrap();
        let record: Record = serde_json::from_slice(&line).unwrap();
        assert_eq!(serde_json::from_value::<AuditEvent>(record.event).unwrap(), event);
        assert_eq!(verify(line.as_slice(), false).unwrap().records, 1);
    }

    #[test]
    fn an_intact_stream_verifies() {
        let lines = stream(5);
        let verified = check(&lines).unwrap();
        assert_eq!(verified.records, 5);
        assert_eq!(verified.head.seq, 5);
        assert_eq!(check(&[]).unwrap().records, 0);
    }

    #[test]
    fn an_altered_event_is_found_at_its_line() {
        let mut lines = stream(5);
        lines[2] = lines[2].replace("req-2", "req-X");
        let err = check(&lines).unwrap_err();
        assert_eq!(err, VerifyError { line: 3, problem: Problem::Altered { seq: 3 } });
    }

    #[test]
    fn a_deleted_or_moved_record_is_found() {
        let mut lines = stream(5);
        lines.remove(1);
        assert_eq!(check(&lines).unwrap_err().problem, Problem::Gap { previous: 1, found: 3 });
        let mut lines = stream(5);
        lines.swap(1, 2);
        assert_eq!(check(&lines).unwrap_err().line, 2);
        // Deleting the first record is a gap too.
        let lines = stream(3);
        assert_eq!(check(&lines[1..]).unwrap_err().problem, Problem::Gap { previous: 0, found: 2 });
        // ... unless the export is declared to start in the middle.
        assert_eq!(verify(lines[1..].concat().as_bytes(), true).unwrap().records, 2);
    }

    #[test]
    fn a_replaced_record_with_its_own_valid_hash_breaks_the_next_link() {
        let mut lines = stream(4);
        // Rewrite record 2 and recompute its hash: record 3 no longer links to it.
        let mut record: Record = serde_json::from_str(&lines[1]).unwrap();
        record.event["request_id"] = "forged".into();
        let prev = decode_hash(&record.prev).unwrap();
        record.hash = hex::encode(link_hash(&prev, 2, &record.event));
        lines[1] = format!("{}\n", serde_json::to_string(&record).unwrap());
        assert_eq!(
            check(&lines).unwrap_err(),
            VerifyError { line: 3, problem: Problem::BrokenLink { seq: 3 } }
        );
    }

    #[test]
    fn field_order_and_whitespace_do_not_matter_but_values_do() {
        let lines = stream(1);
        let value: Value = serde_json::from_str(&lines[0]).unwrap();
        // Pretty-printed and with the event's keys in another order: same content, verifies.
        let mut event: Vec<(String, Value)> =
            value["event"].as_object().unwrap().clone().into_iter().collect();
        event.reverse();
        let reordered = format!(
            "{{\"event\":{{{}}},\"hash\":{},\"prev\":{},\"seq\":1}}\n",
            event
                .iter()
                .map(|(k, v)| format!("{}: {}", serde_json::to_string(k).unwrap(), v))
                .collect::<Vec<_>>()
                .join(", "),
            value["hash"],
            value["prev"]
        );
        assert_eq!(verify(reordered.as_bytes(), false).unwrap().records, 1);
        assert!(matches!(
            verify(b"not json\n".as_slice(), false).unwrap_err().problem,
            Problem::Malformed(_)
        ));
    }

    #[test]
    fn records_delivered_twice_are_counted_but_a_changed_repeat_is_not_accepted() {
        let lines = stream(5);
        // A resend after a lost acknowledgement: 1 2 3 2 3 4 5.
        let resent = [&lines[..3], &lines[1..]].concat();
        let verified = check(&resent).unwrap();
        assert_eq!((verified.records, verified.duplicates, verified.head.seq), (5, 2, 5));
        // A "repeat" of record 2 with other, validly hashed content is a forgery.
        let mut forged: Record = serde_json::from_str(&lines[1]).unwrap();
        forged.event["request_id"] = "forged".into();
        let prev = decode_hash(&forged.prev).unwrap();
        forged.hash = hex::encode(link_hash(&prev, 2, &forged.event));
        let forged = format!("{}\n", serde_json::to_string(&forged).unwrap());
        let with_forgery = [&lines[..3], &[forged][..]].concat();
        assert_eq!(
            check(&with_forgery).unwrap_err(),
            VerifyError { line: 4, problem: Problem::Conflict { seq: 2 } }
        );
    }
}
