//! LocalStack's AWS KMS JSON API, for tests and benchmarks that need keys in it (shared by path:
//! `#[path = "common/localstack.rs"] mod localstack;`).
#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use serde_json::Value;

/// Calls `TrentService.{target}` with `body`; panics unless LocalStack answers success.
pub async fn call(url: &str, target: &str, body: &str) -> Value {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("TrentService.{target}"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{target}: {}", response.status());
    response.json().await.unwrap_or(Value::Null)
}

/// A fresh symmetric key; its ARN.
pub async fn create_key(url: &str) -> String {
    let answer = call(url, "CreateKey", r#"{"Description":"keyhold test"}"#).await;
    answer["KeyMetadata"]["Arn"].as_str().unwrap().to_owned()
}
