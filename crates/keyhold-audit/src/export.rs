//! Reading a stream back from where a sink put it, for [`crate::chain::verify`]: a JSON-lines
//! file, a syslog capture (one RFC 5424 message per line, as rsyslog's `%rawmsg%` or most
//! receivers write them), or an OpenSearch/Elasticsearch export (a `_search` answer, or one
//! hit or `_source` per line).

use std::io::BufRead;

use serde_json::Value;

use crate::chain::{Problem, Record, Verified, Verifier, VerifyError};

/// Where an export comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One chained record per line (the spool, the `file` sink, the webhook's bodies).
    JsonLines,
    /// One syslog message per line; the record is the message's JSON body.
    Syslog,
    /// OpenSearch documents; records are put in `seq` order before checking (an index keeps
    /// no order).
    OpenSearch,
}

/// Checks an export of one tenant's stream. With `tenant`, records of other tenants (a SIEM
/// receiving several) are left out; without it the export must hold one tenant's stream.
pub fn verify_export(
    input: impl BufRead,
    format: ExportFormat,
    tenant: Option<&str>,
    from_middle: bool,
    public_key: Option<Vec<u8>>,
) -> Result<Verified, VerifyError> {
    let mut verifier = Verifier::new(from_middle);
    if let Some(key) = public_key {
        verifier = verifier.with_public_key(key);
    }
    let records = match format {
        ExportFormat::JsonLines | ExportFormat::Syslog => line_records(input, format)?,
        ExportFormat::OpenSearch => opensearch_records(input)?,
    };
    for (line, record) in records {
        if tenant.is_some_and(|t| record.event.get("tenant").and_then(Value::as_str) != Some(t)) {
            continue;
        }
        verifier.push(&record).map_err(|problem| VerifyError { line, problem })?;
    }
    Ok(verifier.finish())
}

/// One chain found in an export: a tenant's stream as one proxy recorded it (each proxy keeps
/// its own spool, so a tenant served by several proxies has one chain per proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The tenant.
    pub tenant: String,
    /// The proxy instance (`""` when events carry none).
    pub proxy: String,
    /// What its check found.
    pub verified: Verified,
}

/// Checks every chain in an export (a SIEM receiving from several proxies and tenants), each
/// on its own; with `tenant`, only that tenant's. `public_keys`: the proxies' audit keys
/// (checkpoints must be signed by one of them; none given: signatures are not checked).
pub fn verify_chains(
    input: impl BufRead,
    format: ExportFormat,
    tenant: Option<&str>,
    from_middle: bool,
    public_keys: &[Vec<u8>],
) -> Result<Vec<ChainReport>, VerifyError> {
    let records = match format {
        ExportFormat::JsonLines | ExportFormat::Syslog => line_records(input, format)?,
        ExportFormat::OpenSearch => opensearch_records(input)?,
    };
    let mut chains: std::collections::BTreeMap<(String, String), Verifier> = Default::default();
    for (line, record) in records {
        let text = |name: &str| {
            record.event.get(name).and_then(Value::as_str).unwrap_or_default().to_owned()
        };
        let (record_tenant, proxy) = (text("tenant"), text("proxy"));
        if tenant.is_some_and(|t| t != record_tenant) {
            continue;
        }
        let verifier = chains.entry((record_tenant, proxy)).or_insert_with(|| {
            public_keys
                .iter()
                .fold(Verifier::new(from_middle), |v, key| v.with_public_key(key.clone()))
        });
        verifier.push(&record).map_err(|problem| VerifyError { line, problem })?;
    }
    Ok(chains
        .into_iter()
        .map(|((tenant, proxy), verifier)| ChainReport {
            tenant,
            proxy,
            verified: verifier.finish(),
        })
        .collect())
}

fn malformed(line: u64, reason: impl std::fmt::Display) -> VerifyError {
    VerifyError { line, problem: Problem::Malformed(reason.to_string()) }
}

fn line_records(
    input: impl BufRead,
    format: ExportFormat,
) -> Result<Vec<(u64, Record)>, VerifyError> {
    let mut records = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line_no = index as u64 + 1;
        let line = line.map_err(|e| malformed(line_no, e))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let json = match format {
            // `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`: the record is the JSON object
            // that MSG holds.
            ExportFormat::Syslog => text
                .find("{\"")
                .and_then(|start| text.get(start..))
                .ok_or_else(|| malformed(line_no, "no JSON record in this syslog message"))?,
            _ => text,
        };
        let record: Record = serde_json::from_str(json).map_err(|e| malformed(line_no, e))?;
        records.push((line_no, record));
    }
    Ok(records)
}

/// The records of an OpenSearch export, in `seq` order, numbered by that order.
fn opensearch_records(mut input: impl BufRead) -> Result<Vec<(u64, Record)>, VerifyError> {
    let mut text = String::new();
    input.read_to_string(&mut text).map_err(|e| malformed(0, e))?;
    let mut documents = Vec::new();
    // A whole `_search` answer, or one JSON value per line.
    let values: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(value) => vec![value],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| malformed(i as u64 + 1, e)))
            .collect::<Result<_, _>>()?,
    };
    for value in values {
        match value.pointer("/hits/hits").and_then(Value::as_array) {
            Some(hits) => documents.extend(hits.iter().cloned()),
            None => documents.push(value),
        }
    }
    let mut records = Vec::with_capacity(documents.len());
    for (i, document) in documents.into_iter().enumerate() {
        let source = document.get("_source").cloned().unwrap_or(document);
        let record: Record =
            serde_json::from_value(source).map_err(|e| malformed(i as u64 + 1, e))?;
        records.push(record);
    }
    records.sort_by_key(|r| r.seq);
    Ok(records.into_iter().enumerate().map(|(i, r)| (i as u64 + 1, r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHead;
    use crate::event::{AuditEvent, EventKind};

    fn stream(tenant: &str, n: usize) -> Vec<String> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|_| {
                let line = head.append(&AuditEvent::new(EventKind::Data, tenant, "wrap")).unwrap();
                String::from_utf8(line).unwrap().trim_end().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_syslog_capture_of_two_tenants_verifies_per_tenant() {
        let (a, b) = (stream("acme", 3), stream("beta", 2));
        let capture: String = [&a[0], &b[0], &a[1], &b[1], &a[2]]
            .iter()
            .map(|r| format!("<110>1 2026-12-01T10:00:00.000Z p1 keyhold - audit - {r}\n"))
            .collect();
        let check =
            |tenant| verify_export(capture.as_bytes(), ExportFormat::Syslog, tenant, false, None);
        assert_eq!(check(Some("acme")).unwrap().records, 3);
        assert_eq!(check(Some("beta")).unwrap().records, 2);
        // Both tenants as one stream: the second record is a conflict/gap, not a pass.
        assert!(check(None).is_err());
        let altered = capture.replacen("\"acme\"", "\"acne\"", 1);
        let err =
            verify_export(altered.as_bytes(), ExportFormat::Syslog, Some("acme"), false, None)
                .unwrap_err();
        // Record 1 left the tenant's stream: record 2 is the first seen, after a gap.
        assert!(matches!(err.problem, Problem::Gap { previous: 0, found: 2 }), "{err}");
    }

    #[test]
    fn a_capture_from_two_proxies_is_two_chains_per_tenant() {
        let stream_of = |proxy: &str, n: usize| -> Vec<String> {
            let mut head = ChainHead::default();
            (0..n)
                .map(|_| {
                    let mut event = AuditEvent::new(EventKind::Data, "acme", "wrap");
                    event.proxy = proxy.to_owned();
                    String::from_utf8(head.append(&event).unwrap()).unwrap().trim_end().to_owned()
                })
                .collect()
        };
        let (p1, p2) = (stream_of("p1", 3), stream_of("p2", 2));
        let capture = [&p1[0], &p2[0], &p1[1], &p2[1], &p1[2]]
            .iter()
            .map(|r| format!("{r}\n"))
            .collect::<String>();
        let chains =
            verify_chains(capture.as_bytes(), ExportFormat::JsonLines, None, false, &[]).unwrap();
        let summary: Vec<(&str, u64)> =
            chains.iter().map(|c| (c.proxy.as_str(), c.verified.records)).collect();
        assert_eq!(summary, [("p1", 3), ("p2", 2)]);
        // One record of p2 deleted: found, at its line.
        let cut = capture.replacen(&format!("{}\n", p2[0]), "", 1);
        let err =
            verify_chains(cut.as_bytes(), ExportFormat::JsonLines, None, false, &[]).unwrap_err();
        assert_eq!((err.line, err.problem), (3, Problem::Gap { previous: 0, found: 2 }));
    }

    #[test]
    fn an_opensearch_export_is_checked_in_seq_order_and_an_altered_document_is_found() {
        let lines = stream("acme", 4);
        let mut hits: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::json!({"_id": "x", "_source": serde_json::from_str::<Value>(l).unwrap()}))
            .collect();
        hits.reverse();
        let answer = serde_json::json!({"hits": {"total": {"value": 4}, "hits": hits}});
        let text = answer.to_string();
        assert_eq!(
            verify_export(text.as_bytes(), ExportFormat::OpenSearch, None, false, None)
                .unwrap()
                .records,
            4
        );
        let mut altered = answer.clone();
        altered["hits"]["hits"][1]["_source"]["event"]["operation"] = "unwrap".into();
        let err = verify_export(
            altered.to_string().as_bytes(),
            ExportFormat::OpenSearch,
            None,
            false,
            None,
        )
        .unwrap_err();
        // hits[1] is seq 3 (reversed order).
        assert_eq!(err.problem, Problem::Altered { seq: 3 });
        let mut deleted = answer;
        deleted["hits"]["hits"].as_array_mut().unwrap().remove(2);
        let err = verify_export(
            deleted.to_string().as_bytes(),
            ExportFormat::OpenSearch,
            None,
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(err.problem, Problem::Gap { previous: 1, found: 3 });
    }
}
