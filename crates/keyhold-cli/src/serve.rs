//! `keyhold up`, `keyhold proxy` and `keyhold broker`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use keyhold_broker::{Broker, BrokerConfig, NewKmsConfig};
use keyhold_proxy::{Proxy, ProxyConfig, bootstrap, shutdown_signal};

/// The tenant `keyhold up` creates.
pub const DEMO_TENANT: &str = "demo-tenant";

pub async fn up(data_dir: &Path, listen: &str, broker_listen: &str) -> anyhow::Result<()> {
    listen
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:32804"))?;
    broker_listen.parse::<std::net::SocketAddr>().with_context(|| {
        format!("--broker-listen {broker_listen:?} is not an address like 127.0.0.1:32805")
    })?;
    let data =
        bootstrap::init_data_dir_with_broker(data_dir, &[DEMO_TENANT], listen, broker_listen)
            .with_context(|| format!("cannot set up {}", data_dir.display()))?;
    let stop = Shutdown::on_signal();
    // The broker first: the proxy takes its tenants from it at start.
    let mut broker_line = String::new();
    let mut broker_addr = None;
    let broker_task = match &data.broker_config_path {
        Some(path) => {
            let config = load_broker_config(path)?;
            let broker = Broker::bind(&config)
                .await
                .with_context(|| format!("cannot start the broker of {}", path.display()))?;
            seed_demo_tenant(&broker).await?;
            let addr = broker.local_addr()?;
            broker_addr = Some(addr);
            broker_line = format!(
                "\n  broker    http://{addr}  (web UI; OpenAPI at /api/openapi.json; vendor API key in {})",
                data.dir.join(bootstrap::VENDOR_API_KEY_FILE).display()
            );
            Some(tokio::spawn(broker.run(stop.wait())))
        }
        // A data directory made before the broker existed: tenants stay in keyhold.toml.
        None => None,
    };
    let mut config = ProxyConfig::load(&data.config_path)?;
    // The broker runs in this process: its bound address is the one to pull from (it differs
    // from the file's when --broker-listen asked for port 0).
    if let (Some(source), Some(addr)) = (config.broker.as_mut(), broker_addr) {
        source.url = format!("http://{addr}");
    }
    let proxy = Proxy::bind(&config).await?;
    let addr = proxy.local_addr().context("the listener has no address")?;
    let dir = data.dir.display();
    let key_file = data.api_key_path.display();
    eprintln!(
        "\nKeyhold is running{}.\n\
         \n  proxy     http://{addr}{broker_line}\
         \n  data      {dir}  (configuration: {cfg})\
         \n  API key   in {key_file}\
         \n  tenants   {tenants}\
         \n\nTry it from another terminal in this directory:\
         \n  curl -s -H \"Authorization: cmk $(cat {key_file})\" \\\
         \n       -d '{{\"tenantId\":\"{DEMO_TENANT}\",\"iclFields\":{{\"requestingId\":\"me\"}}}}' \\\
         \n       http://{addr}/api/1/document/wrap\
         \n  echo 'hello' > hello.txt\
         \n  keyhold encrypt --tenant {DEMO_TENANT} --in hello.txt --out hello.txt.khf\
         \n  keyhold decrypt --in hello.txt.khf --out hello.out.txt\
         \n\nStop with Ctrl-C.\n",
        if data.created {
            " (first run: created a root key, a keystore, a demo tenant and an API key)"
        } else {
            ""
        },
        cfg = data.config_path.display(),
        tenants = proxy
            .state()
            .service
            .registry()
            .tenants()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
            .join(", "),
    );
    proxy.run(stop.wait()).await?;
    if let Some(task) = broker_task {
        task.await.context("the broker task failed")??;
    }
    Ok(())
}

pub async fn broker(config_path: &Path) -> anyhow::Result<()> {
    let config = load_broker_config(config_path)?;
    let broker = Broker::bind(&config).await?;
    broker.run(shutdown_signal()).await?;
    Ok(())
}

/// Reads a broker configuration; relative paths (and a relative SQLite file) are relative to
/// the file's directory, as in the proxy's configuration.
pub fn load_broker_config(path: &Path) -> anyhow::Result<BrokerConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut config = BrokerConfig::from_toml(&text)
        .with_context(|| format!("invalid broker configuration {}", path.display()))?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    resolve(&mut config.signing_key_file);
    resolve(&mut config.vendor_api_key_file);
    resolve(&mut config.proxy_token_file);
    if let Some(tls) = &config.tls {
        config.tls =
            Some(tls.resolved(|p| if p.is_relative() { base.join(p) } else { p.to_owned() }));
    }
    if let Some(rest) = config.database_url.strip_prefix("sqlite://") {
        let file = rest.split('?').next().unwrap_or_default();
        if !file.is_empty() && !file.starts_with('/') && !file.starts_with(':') {
            let query = rest.strip_prefix(file).unwrap_or_default();
            config.database_url = format!("sqlite://{}{query}", base.join(file).display());
        }
    }
    Ok(config)
}

/// The demo tenant and its local key, created through the broker if missing.
async fn seed_demo_tenant(broker: &Broker) -> anyhow::Result<()> {
    let store = broker.store();
    store
        .ensure_tenant("keyhold up", DEMO_TENANT, Some("Demo tenant"))
        .await
        .context("cannot create the demo tenant in the broker")?;
    store
        .ensure_kms_config(
            "keyhold up",
            DEMO_TENANT,
            NewKmsConfig {
                kind: "local".into(),
                settings: serde_json::json!({ "key": DEMO_TENANT }),
                sealed: None,
                status: None,
            },
        )
        .await
        .context("cannot create the demo tenant's KMS configuration in the broker")?;
    Ok(())
}

/// One Ctrl-C or SIGTERM, seen by every server of the process.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    fn on_signal() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

pub async fn proxy(config_path: &Path) -> anyhow::Result<()> {
    let config = ProxyConfig::load(config_path)?;
    let proxy = Proxy::bind(&config).await?;
    proxy.run(shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Relative paths of a broker configuration, `[tls]` included, are relative to its file.
    #[test]
    fn broker_paths_are_relative_to_the_configuration_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "signing_key_file = \"signing.key\"\nvendor_api_key_file = \"/abs/vendor\"\n\
             proxy_token_file = \"token\"\n[tls]\ncert_file = \"tls/broker.crt\"\n\
             key_file = \"/abs/broker.key\"\nclient_ca_file = \"ca.crt\"\n",
        )
        .unwrap();
        let config = load_broker_config(&path).unwrap();
        assert_eq!(config.signing_key_file, dir.path().join("signing.key"));
        assert_eq!(config.vendor_api_key_file, Path::new("/abs/vendor"));
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert_file, dir.path().join("tls/broker.crt"));
        assert_eq!(tls.key_file, Path::new("/abs/broker.key"));
        assert_eq!(tls.client_ca_file, Some(dir.path().join("ca.crt")));
        assert_eq!(tls.reload_interval_ms, 60_000);
    }
}
