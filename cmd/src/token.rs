//! `keelson token create`: a bootstrap token for joining nodes (kubeadm's
//! `token create`), and with `--print-join-command` the whole
//! `keelson agent --server … --token … --ca-cert-hash …` line.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rand::Rng;

use crate::proxy::Dur;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it.
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// An admin kubeconfig.
    #[arg(long, default_value = "/var/lib/keelson/server/admin.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// How long the token may be used to join (0: no expiry).
    #[arg(long, default_value = "24h")]
    pub ttl: Dur,
    /// What the token is for.
    #[arg(long, default_value = "created by keelson token create")]
    pub description: String,
    /// Print the `keelson agent` command that joins with it.
    #[arg(long)]
    pub print_join_command: bool,
    /// The API server URL joining nodes use (default: the kubeconfig's).
    #[arg(long)]
    pub server: Option<String>,
}

fn random(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The cluster CA (PEM) and server URL of a kubeconfig.
fn cluster_of(kubeconfig: &std::path::Path) -> anyhow::Result<(String, String)> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .context("certificate-authority-data is not base64")?,
        )?,
        (None, Some(file)) => {
            std::fs::read_to_string(file).with_context(|| format!("read {file}"))?
        }
        (None, None) => anyhow::bail!("the kubeconfig names no cluster CA"),
    };
    Ok((ca, cluster.server.unwrap_or_default()))
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let TokenCommand::Create(args) = args.command;
    let client = crate::client_from(&args.kubeconfig).await?;
    let (id, secret) = (random(6), random(16));
    let expires = (!args.ttl.0.is_zero()).then(|| {
        (chrono::Utc::now() + args.ttl.0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let object = keelson_control_plane::server::nodejoin::token_secret(
        &id,
        &secret,
        expires.as_deref(),
        &args.description,
    );
    let s: Secret = serde_json::from_value(object)?;
    Api::<Secret>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &s)
        .await
        .context("create the bootstrap token's Secret")?;
    let token = format!("{id}.{secret}");
    if args.print_join_command {
        let (ca, server) = cluster_of(&args.kubeconfig)?;
        let hash = keelson_host::serve::ca_cert_hash(&ca).map_err(anyhow::Error::msg)?;
        let server = args.server.unwrap_or(server);
        println!(
            "keelson agent --server {server} --token {token} --ca-cert-hash {hash} --node-name NAME"
        );
    } else {
        println!("{token}");
    }
    Ok(())
}
