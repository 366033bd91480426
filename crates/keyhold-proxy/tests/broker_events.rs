//! How the broker's records become audit events of the tenant's trail: the admin events (the
//! change history) and the E2E service's events. The whole path (broker → proxy → spool) is
//! tested in crates/keyhold-broker/tests/e2e_proxy.rs and crates/keyhold-cli/tests/broker.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use keyhold_audit::EventKind;
use keyhold_proxy::broker::{BrokerChange, BrokerFeed};
use serde_json::{Value, json};

fn record(value: Value) -> BrokerChange {
    serde_json::from_value(value).unwrap()
}

#[test]
fn e2e_events_keep_their_action_actor_and_detail() {
    let detail = json!({"action": "e2e.document.decrypt_denied", "actor_user": "bob",
                        "actor_device": "laptop", "document": "plan"});
    let denied = record(json!({"id": 7, "tenant": "acme", "at": "2026-12-01T10:00:00Z",
                               "actor": "bob/laptop", "action": "e2e.document.decrypt_denied",
                               "detail": detail}));
    let event = denied.audit_event(BrokerFeed::E2e, "proxy-1");
    assert_eq!(event.kind, EventKind::Data);
    assert_eq!(
        (event.operation.as_str(), event.outcome.as_str()),
        ("e2e.document.decrypt_denied", "refused")
    );
    assert_eq!((event.tenant.as_str(), event.requesting_id.as_str()), ("acme", "bob/laptop"));
    assert_eq!(event.request_id, "broker-e2e-event-7");
    assert_eq!(
        (event.object_id.as_str(), event.keys, event.proxy.as_str()),
        ("plan", 1, "proxy-1")
    );
    assert_eq!(serde_json::from_str::<Value>(&event.custom["detail"]).unwrap(), detail);
    assert_eq!(event.custom["recorded_at"], "2026-12-01T10:00:00Z");
    assert_eq!(event.kms_config_id, None);

    let granted = record(json!({"id": 8, "tenant": "acme", "at": "t", "actor": "bob/laptop",
                                "action": "e2e.document.decrypt",
                                "detail": {"action": "e2e.document.decrypt", "document": "plan", "group": "team"}}));
    let event = granted.audit_event(BrokerFeed::E2e, "proxy-1");
    assert_eq!((event.kind, event.outcome.as_str(), event.code), (EventKind::Data, "granted", 0));

    // Changes of users, devices, groups and grants are admin events; without a document the
    // event's id names the object.
    let added = record(json!({"id": 9, "tenant": "acme", "at": "t", "actor": "alice/laptop",
                              "action": "e2e.group.member_add",
                              "detail": {"action": "e2e.group.member_add", "group": "team", "user": "bob"}}));
    let event = added.audit_event(BrokerFeed::E2e, "proxy-1");
    assert_eq!((event.kind, event.object_id.as_str(), event.keys), (EventKind::Admin, "9", 0));
    let created = record(json!({"id": 1, "tenant": "acme", "at": "t", "actor": "vendor",
                                "action": "e2e.user.create", "detail": {"action": "e2e.user.create", "user": "bob"}}));
    assert_eq!(created.audit_event(BrokerFeed::E2e, "p").requesting_id, "vendor");
}

#[test]
fn admin_events_are_unchanged() {
    let change = record(json!({"id": 42, "tenant": "acme", "at": "2026-12-01T10:00:00Z",
                               "actor": "vendor", "action": "kms_config.primary",
                               "detail": {"id": 7, "from": "active"}}));
    let event = change.audit_event(BrokerFeed::Admin, "proxy-1");
    let mut direct = change.to_audit_event("proxy-1");
    direct.id.clone_from(&event.id);
    direct.time.clone_from(&event.time);
    assert_eq!(event, direct);
    assert_eq!((event.kind, event.operation.as_str()), (EventKind::Admin, "kms_config.primary"));
    assert_eq!((event.request_id.as_str(), event.object_id.as_str()), ("broker-change-42", "42"));
    assert_eq!((event.kms_config_id, event.requesting_id.as_str()), (Some(7), "vendor"));
    assert_eq!(event.custom["changed_at"], "2026-12-01T10:00:00Z");
}
