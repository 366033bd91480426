//! `keyhold e2e`: end-to-end encryption to groups, users and devices through a broker's E2E
//! service (docs/e2e-api.md). A device is a key file (`--device-file`, default
//! `./keyhold-device.json`); it never leaves the machine.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use keyhold::e2e::{Device, E2eService, Recipient};
use zeroize::Zeroizing;

/// Default broker URL (`keyhold up`'s).
const DEFAULT_BROKER: &str = "http://127.0.0.1:32805";

#[derive(Debug, Args)]
pub struct E2eArgs {
    #[command(subcommand)]
    command: E2eCommand,
}

/// The vendor's side: which broker and tenant, and the vendor API key.
#[derive(Debug, Args)]
struct VendorOpts {
    /// The broker's URL.
    #[arg(long, env = "KEYHOLD_BROKER_URL", default_value = DEFAULT_BROKER)]
    broker: String,
    /// The organization (tenant).
    #[arg(long, env = "KEYHOLD_TENANT", default_value = "demo-tenant")]
    tenant: String,
    /// File holding the broker's vendor API key (`keyhold up`: .keyhold/vendor-api-key).
    #[arg(long, env = "KEYHOLD_VENDOR_API_KEY_FILE", default_value = ".keyhold/vendor-api-key")]
    vendor_api_key_file: PathBuf,
    /// File holding the user's passphrase (else `KEYHOLD_E2E_PASSPHRASE`).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DeviceOpts {
    /// This device's key file.
    #[arg(
        long,
        global = true,
        env = "KEYHOLD_E2E_DEVICE_FILE",
        default_value = "keyhold-device.json"
    )]
    device_file: PathBuf,
    /// The CA certificates (PEM) that issued the broker's TLS certificate, when not a public
    /// CA: trusted instead of the system's roots, and kept in the device file (given again,
    /// they replace the ones there).
    #[arg(long, global = true, env = "KEYHOLD_BROKER_CA")]
    broker_ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum E2eCommand {
    /// Register a new user with this machine as its first device (keys made here; the
    /// passphrase seals the user's keys so that the user can add devices later).
    Enroll {
        /// The user's id.
        #[arg(long)]
        user: String,
        /// This device's id.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        vendor: VendorOpts,
        #[command(flatten)]
        out: DeviceOpts,
    },
    /// Add this machine as a further device of an existing user (needs the passphrase).
    AddDevice {
        /// The user's id.
        #[arg(long)]
        user: String,
        /// This device's id.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        vendor: VendorOpts,
        #[command(flatten)]
        out: DeviceOpts,
    },
    /// Revoke one of this user's devices (this one included).
    RevokeDevice {
        /// The device to revoke.
        device: String,
        #[command(flatten)]
        me: DeviceOpts,
    },
    /// Print the fingerprint of a user's signing key as this device sees it (checked and
    /// pinned), to compare out of band with what the user's own device prints.
    Fingerprint {
        /// The user (default: this device's user).
        user: Option<String>,
        #[command(flatten)]
        me: DeviceOpts,
    },
    /// Groups: create, show, add or remove members and admins.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[command(flatten)]
        me: DeviceOpts,
    },
    /// Encrypt a file to groups and users; the service stores it once.
    Encrypt {
        /// The document's id.
        #[arg(long)]
        id: String,
        /// The file to encrypt.
        #[arg(long = "in")]
        input: PathBuf,
        /// A recipient, `group:NAME` or `user:NAME` (repeat).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[command(flatten)]
        me: DeviceOpts,
    },
    /// Decrypt a document on this device into a file.
    Decrypt {
        /// The document's id.
        #[arg(long)]
        id: String,
        /// Where to write the plaintext.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        me: DeviceOpts,
    },
    /// Grant a document to one more group or user.
    Grant {
        /// The document's id.
        #[arg(long)]
        id: String,
        /// `group:NAME` or `user:NAME`.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        me: DeviceOpts,
    },
    /// Revoke a group's or user's grant on a document.
    Revoke {
        /// The document's id.
        #[arg(long)]
        id: String,
        /// `group:NAME` or `user:NAME`.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        me: DeviceOpts,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group administered by this user (and with it as a member).
    Create {
        /// The group's id.
        group: String,
        /// Do not make this user a member (an admin only).
        #[arg(long)]
        not_member: bool,
    },
    /// Show a group's members and admins.
    Show {
        /// The group's id.
        group: String,
    },
    /// Add a member (admins).
    AddMember {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
    /// Remove a member (admins, or the member itself).
    RemoveMember {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
    /// Make a user an admin (admins).
    AddAdmin {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
    /// Remove an admin (admins; never the last).
    RemoveAdmin {
        /// The group.
        group: String,
        /// The user.
        user: String,
    },
}

fn recipient(text: &str) -> anyhow::Result<Recipient> {
    match text.split_once(':') {
        Some(("group", g)) if !g.is_empty() => Ok(Recipient::Group(g.to_owned())),
        Some(("user", u)) if !u.is_empty() => Ok(Recipient::User(u.to_owned())),
        _ => bail!("recipient {text:?} is not `group:NAME` or `user:NAME`"),
    }
}

fn passphrase(opts: &VendorOpts) -> anyhow::Result<Zeroizing<String>> {
    let text = match &opts.passphrase_file {
        Some(p) => Zeroizing::new(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => Zeroizing::new(
            std::env::var("KEYHOLD_E2E_PASSPHRASE")
                .context("no passphrase: give --passphrase-file or set KEYHOLD_E2E_PASSPHRASE")?,
        ),
    };
    let trimmed = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
    if trimmed.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(trimmed)
}

fn vendor(opts: &VendorOpts, device: &DeviceOpts) -> anyhow::Result<keyhold::e2e::VendorE2e> {
    let key =
        Zeroizing::new(std::fs::read_to_string(&opts.vendor_api_key_file).with_context(|| {
            format!("cannot read the vendor API key {}", opts.vendor_api_key_file.display())
        })?);
    let service = match broker_ca(device)? {
        Some(ca) => E2eService::with_broker_ca(&opts.broker, &opts.tenant, &ca),
        None => E2eService::new(&opts.broker, &opts.tenant),
    }
    .context("--broker-ca")?;
    Ok(service.vendor(key.trim()))
}

/// The PEM text of `--broker-ca`, if given.
fn broker_ca(opts: &DeviceOpts) -> anyhow::Result<Option<String>> {
    opts.broker_ca
        .as_deref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("--broker-ca: cannot read {}", path.display()))
        })
        .transpose()
}

/// The device of the device file; with `--broker-ca` other than the file's, that CA from now
/// on, saved into the file at once.
fn load(opts: &DeviceOpts) -> anyhow::Result<Device> {
    let mut device = Device::load(&opts.device_file)
        .with_context(|| format!("cannot load the device file {}", opts.device_file.display()))?;
    if let Some(ca) = broker_ca(opts)?
        && device.broker_ca() != Some(ca.as_str())
    {
        device.set_broker_ca(&ca).context("--broker-ca")?;
        device.save(&opts.device_file).with_context(|| {
            format!("cannot save the broker CA to {}", opts.device_file.display())
        })?;
    }
    Ok(device)
}

fn refuse_overwrite(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} exists: this machine is already a device; use another --device-file",
            path.display()
        );
    }
    Ok(())
}

pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    match args.command {
        E2eCommand::Enroll { user, device, vendor: v, out } => {
            refuse_overwrite(&out.device_file)?;
            let pass = passphrase(&v)?;
            let d = vendor(&v, &out)?.enroll_user(&user, pass.as_bytes(), &device).await?;
            d.save(&out.device_file)?;
            eprintln!(
                "enrolled user {user} with device {device} (keys in {})",
                out.device_file.display()
            );
        }
        E2eCommand::AddDevice { user, device, vendor: v, out } => {
            refuse_overwrite(&out.device_file)?;
            let pass = passphrase(&v)?;
            let d = vendor(&v, &out)?.add_device(&user, pass.as_bytes(), &device).await?;
            d.save(&out.device_file)?;
            eprintln!(
                "authorized device {device} of {user} (keys in {})",
                out.device_file.display()
            );
        }
        E2eCommand::RevokeDevice { device, me } => {
            let d = load(&me)?;
            let r = d.revoke_device(&device).await;
            keep_pins(&d, &me, r)?;
            eprintln!("revoked device {device}");
        }
        E2eCommand::Fingerprint { user, me } => {
            let d = load(&me)?;
            let user = user.unwrap_or_else(|| d.user().to_owned());
            let r = d.fingerprint(&user).await;
            println!("{}", keep_pins(&d, &me, r)?);
        }
        E2eCommand::Group { command, me } => {
            let d = load(&me)?;
            let r = group(&d, command).await;
            keep_pins(&d, &me, r)?;
        }
        E2eCommand::Encrypt { id, input, to, me } => {
            let to = to.iter().map(|t| recipient(t)).collect::<anyhow::Result<Vec<_>>>()?;
            let d = load(&me)?;
            let r = d.encrypt_file(&id, &input, &to).await;
            keep_pins(&d, &me, r)?;
            eprintln!("stored document {id}");
        }
        E2eCommand::Decrypt { id, out, me } => {
            let d = load(&me)?;
            let r = d.decrypt_file(&id, &out).await;
            let author = keep_pins(&d, &me, r)?;
            eprintln!("decrypted {id} (written by {author}) to {}", out.display());
        }
        E2eCommand::Grant { id, to, me } => {
            let to = recipient(&to)?;
            let d = load(&me)?;
            let r = d.grant(&id, &to).await;
            keep_pins(&d, &me, r)?;
            eprintln!("granted {id}");
        }
        E2eCommand::Revoke { id, from, me } => {
            let from = recipient(&from)?;
            let d = load(&me)?;
            let r = d.revoke(&id, &from).await;
            keep_pins(&d, &me, r)?;
            eprintln!("revoked the grant on {id}");
        }
    }
    Ok(())
}

/// Saves the keys the command pinned into the device file (whether the command succeeded or
/// not: a pin is a fact learned), then gives the command's result.
fn keep_pins<T>(
    d: &Device,
    me: &DeviceOpts,
    r: Result<T, keyhold::e2e::E2eError>,
) -> anyhow::Result<T> {
    if d.pins_changed() {
        d.save(&me.device_file).with_context(|| {
            format!("cannot save pinned keys to the device file {}", me.device_file.display())
        })?;
    }
    Ok(r?)
}

async fn group(d: &Device, command: GroupCommand) -> Result<(), keyhold::e2e::E2eError> {
    match command {
        GroupCommand::Create { group, not_member } => {
            d.create_group(&group, !not_member).await?;
            eprintln!("created group {group}");
        }
        GroupCommand::Show { group } => {
            let g = d.group(&group).await?;
            println!(
                "{}",
                serde_json::json!({"group": g.group, "members": g.members, "admins": g.admins})
            );
        }
        GroupCommand::AddMember { group, user } => {
            d.add_member(&group, &user).await?;
            eprintln!("added {user} to {group}");
        }
        GroupCommand::RemoveMember { group, user } => {
            d.remove_member(&group, &user).await?;
            eprintln!("removed {user} from {group}");
        }
        GroupCommand::AddAdmin { group, user } => {
            d.add_admin(&group, &user).await?;
            eprintln!("made {user} an admin of {group}");
        }
        GroupCommand::RemoveAdmin { group, user } => {
            d.remove_admin(&group, &user).await?;
            eprintln!("removed admin {user} from {group}");
        }
    }
    Ok(())
}
