//! No request, however malformed, makes the proxy answer 500 or panic: every refusal is a 4xx
//! with the TSP error body.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;

use common::TestProxy;
use proptest::prelude::*;
use serde_json::{Value, json};

const ROUTES: &[&str] = &[
    "/api/1/document/wrap",
    "/api/1/document/unwrap",
    "/api/1/document/batch-wrap",
    "/api/1/document/batch-unwrap",
    "/api/1/document/rekey",
    "/api/1/document/batch-rekey",
    "/api/1/event/security-event",
    "/api/1/document/report-operations",
];

struct Fixture {
    proxy: TestProxy,
    edek: String,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let proxy = TestProxy::new();
        let edek = runtime.block_on(proxy.wrap("tenant-a"))["edek"].as_str().unwrap().to_owned();
        Fixture { proxy, edek, runtime }
    })
}

fn any_json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        Just(json!("tenant-a")),
        Just(json!("tenant-b")),
        Just(Value::String("EDEK".into())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("tenantId"),
        Just("iclFields"),
        Just("customFields"),
        Just("encryptedDocumentKey"),
        Just("documentIds"),
        Just("edeks"),
        Just("newTenantId"),
        Just("timestampMillis"),
        Just("event"),
        Just("operations"),
    ];
    let structured =
        proptest::collection::vec((field, any_json_value()), 0..8).prop_map(|fields| {
            let mut obj = serde_json::Map::new();
            obj.insert("tenantId".into(), json!("tenant-a"));
            obj.insert("iclFields".into(), json!({"requestingId": "fuzz"}));
            for (k, v) in fields {
                obj.insert(k.into(), v);
            }
            serde_json::to_vec(&Value::Object(obj)).unwrap()
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), structured]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_requests_never_cause_a_server_error(route in proptest::sample::select(ROUTES), body in request_body()) {
        let f = fixture();
        // Substitute a real EDEK where the generator wrote a placeholder, to reach deeper code.
        let text = String::from_utf8_lossy(&body).replace("\"EDEK\"", &format!("\"{}\"", f.edek));
        let auth = format!("cmk {}", f.proxy.api_key);
        let (status, response) = f.runtime.block_on(f.proxy.post_raw(route, Some(&auth), text.into_bytes()));
        prop_assert!(!status.is_server_error(), "{route}: {status} {response}");
        if !status.is_success() {
            prop_assert!(response["code"].is_number(), "{route}: {status} without a code: {response}");
        }
    }
}
