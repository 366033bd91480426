//! `keyhold up` and `keyhold proxy`.

use std::path::Path;

use anyhow::Context as _;
use keyhold_proxy::{Proxy, ProxyConfig, bootstrap, shutdown_signal};

/// The tenant `keyhold up` creates.
pub const DEMO_TENANT: &str = "demo-tenant";

pub async fn up(data_dir: &Path, listen: &str) -> anyhow::Result<()> {
    listen
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:32804"))?;
    let data = bootstrap::init_data_dir(data_dir, &[DEMO_TENANT], listen)
        .with_context(|| format!("cannot set up {}", data_dir.display()))?;
    let config = ProxyConfig::load(&data.config_path)?;
    let proxy = Proxy::bind(&config).await?;
    let addr = proxy.local_addr().context("the listener has no address")?;
    let dir = data.dir.display();
    let key_file = data.api_key_path.display();
    eprintln!(
        "\nKeyhold is running{}.\n\
         \n  proxy     http://{addr}\
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
        tenants = config.tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", "),
    );
    proxy.run(shutdown_signal()).await?;
    Ok(())
}

pub async fn proxy(config_path: &Path) -> anyhow::Result<()> {
    let config = ProxyConfig::load(config_path)?;
    let proxy = Proxy::bind(&config).await?;
    proxy.run(shutdown_signal()).await?;
    Ok(())
}
