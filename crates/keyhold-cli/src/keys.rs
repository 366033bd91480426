//! `keyhold keys`: the vendor-held master keys of a local keystore. A running proxy picks up
//! changes on its next request (or within `keystore_check_interval`, when one is set).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use keyhold_kms::local::{KeyInfo, Keystore, load_root_key};

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// The data directory of `keyhold up` (its `keystore` and `root.key`).
    #[arg(long, global = true, default_value = ".keyhold", env = "KEYHOLD_DATA_DIR")]
    data_dir: PathBuf,
    /// The keystore file (overrides DATA_DIR/keystore).
    #[arg(long, global = true)]
    keystore: Option<PathBuf>,
    /// The root key file (overrides DATA_DIR/root.key; else $KEYHOLD_ROOT_KEY).
    #[arg(long, global = true)]
    root_key_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List keys, their versions and state.
    List,
    /// Create a key.
    Create {
        /// The key's name (what a KMS configuration's `key` refers to).
        name: String,
    },
    /// Add a new version; older versions keep unwrapping existing data.
    Rotate {
        /// The key.
        name: String,
    },
    /// Disable a key: every wrap and unwrap with it is refused (the tenant's data is locked).
    Disable {
        /// The key.
        name: String,
    },
    /// Enable a disabled key.
    Enable {
        /// The key.
        name: String,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let keystore_path = args.keystore.clone().unwrap_or_else(|| args.data_dir.join("keystore"));
    let root_path = args.root_key_file.clone().or_else(|| {
        let default = args.data_dir.join("root.key");
        default.exists().then_some(default)
    });
    let root = load_root_key(root_path.as_deref())?;
    let keystore = Keystore::open(&keystore_path, root)
        .with_context(|| format!("cannot open the keystore {}", keystore_path.display()))?;
    let changed = match &args.action {
        Action::List => {
            print(&keystore.list(), args.json)?;
            return Ok(());
        }
        Action::Create { name } => keystore.create_key(name)?,
        Action::Rotate { name } => keystore.rotate_key(name)?,
        Action::Disable { name } => keystore.set_enabled(name, false)?,
        Action::Enable { name } => keystore.set_enabled(name, true)?,
    };
    print(&[changed], args.json)
}

fn print(keys: &[KeyInfo], json: bool) -> anyhow::Result<()> {
    match write_keys(&mut std::io::stdout().lock(), keys, json) {
        // `keyhold keys list | head`: the reader left; that is not our failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

fn write_keys(out: &mut impl Write, keys: &[KeyInfo], json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, keys)?;
        writeln!(out)?;
        return out.flush();
    }
    writeln!(out, "{:<32} {:<9} {:>8}  versions", "name", "state", "current")?;
    for key in keys {
        let versions: Vec<String> = key.versions.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "{:<32} {:<9} {:>8}  {}",
            key.name,
            if key.enabled { "enabled" } else { "disabled" },
            key.current_version,
            versions.join(",")
        )?;
    }
    out.flush()
}
