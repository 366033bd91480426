//! `keyhold seal`: seal a credential to the proxy fleet, as the broker's web page does, so it
//! never reaches the broker in the clear (docs/broker.md §1).

use std::io::Read as _;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use keyhold_core::seal::{FleetPublicKey, SealPurpose, seal};
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct SealArgs {
    /// The tenant the credential is for (part of what is sealed: it opens for no other).
    #[arg(long)]
    tenant: String,
    /// What the credential is for.
    #[arg(long, value_enum, default_value_t = Purpose::Kms)]
    purpose: Purpose,
    /// Take the fleet's public key from this broker (`GET /api/v1/fleet-key`).
    #[arg(long, env = "KEYHOLD_BROKER_URL", conflicts_with = "fleet_key")]
    broker: Option<String>,
    /// For an `https://` broker whose certificate a private CA issued: PEM CA certificates, the
    /// only ones trusted for it.
    #[arg(long, env = "KEYHOLD_BROKER_CA")]
    broker_ca: Option<std::path::PathBuf>,
    /// The fleet's public key itself (base64), or a file holding it (`fleet.pub`).
    #[arg(long)]
    fleet_key: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Purpose {
    /// KMS credentials.
    Kms,
    /// SIEM (audit sink) credentials.
    Siem,
}

/// Reads the secret fields as a JSON object (`{"token": "…"}`) on standard input and prints the
/// sealed blob to put in a configuration's `sealed` field.
pub async fn run(args: SealArgs) -> anyhow::Result<()> {
    let key = match (&args.broker, &args.fleet_key) {
        (_, Some(key)) => {
            let text = match std::fs::read_to_string(key) {
                Ok(text) => text,
                Err(_) => key.clone(),
            };
            FleetPublicKey::from_base64(&text).context("--fleet-key")?
        }
        (Some(broker), None) => {
            let url = format!("{}/api/v1/fleet-key", broker.trim_end_matches('/'));
            let answer: serde_json::Value = crate::broker_http::client(args.broker_ca.as_deref())?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?
                .error_for_status()
                .with_context(|| format!("{url} refused"))?
                .json()
                .await
                .with_context(|| format!("{url} did not answer with a fleet key"))?;
            let key = answer
                .get("public_key")
                .and_then(serde_json::Value::as_str)
                .context("no public_key in the answer")?;
            FleetPublicKey::from_base64(key).context("the broker's fleet key")?
        }
        (None, None) => anyhow::bail!("give --broker URL or --fleet-key KEY"),
    };
    let mut input = Zeroizing::new(String::new());
    std::io::stdin().read_to_string(&mut input).context("cannot read standard input")?;
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&input).map_err(|_| {
            anyhow::anyhow!(
                "standard input must be a JSON object of strings, e.g. {{\"token\": \"…\"}}"
            )
        })?;
    if fields.is_empty() || !fields.values().all(serde_json::Value::is_string) {
        anyhow::bail!("standard input must be a non-empty JSON object of strings");
    }
    let purpose = match args.purpose {
        Purpose::Kms => SealPurpose::Kms,
        Purpose::Siem => SealPurpose::Siem,
    };
    let sealed = seal(&key, purpose, &args.tenant, input.trim().as_bytes())?;
    println!("{sealed}");
    Ok(())
}
