//! `demo-issuer`: the alpha/beta demo's OAuth token issuer (see `lanyard_examples::issuer`).
//!
//! demo-issuer --name issuer.demo.test --cert C --key K --workload-api unix:///S
//!             --allowed-prefix spiffe://demo.test/ --audience alpha=alpha.read[,..] ... [--ttl 300] [--listen ADDR]
//!             [--owner-token OWNER=PATH ...]
//!
//! `--owner-token` writes (mode 0600) a token for the human OWNER, valid for an
//! hour, as the provisioning service that creates a sandbox on someone's
//! behalf would hold: Lanyard's on-behalf-of delegation exchanges it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lanyard_examples::issuer::{IssuerConfig, start};

#[tokio::main]
async fn main() -> Result<(), lanyard_examples::pki::Error> {
    let mut a = std::env::args().skip(1);
    let (mut name, mut cert, mut key, mut wl, mut prefix) = (None, None, None, None, None);
    let (mut audiences, mut ttl, mut listen) = (BTreeMap::new(), 300, "127.0.0.1:0".to_owned());
    let mut owners: Vec<(String, PathBuf)> = Vec::new();
    while let Some(flag) = a.next() {
        let v = a.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(v),
            "--cert" => cert = Some(PathBuf::from(v)),
            "--key" => key = Some(PathBuf::from(v)),
            "--workload-api" => wl = Some(v),
            "--allowed-prefix" => prefix = Some(v),
            "--ttl" => ttl = v.parse()?,
            "--listen" => listen = v,
            "--owner-token" => {
                let (owner, path) = v.split_once('=').ok_or("--owner-token OWNER=PATH")?;
                owners.push((owner.to_owned(), PathBuf::from(path)));
            }
            "--audience" => {
                let (aud, scopes) = v.split_once('=').ok_or("--audience NAME=scope,scope")?;
                audiences.insert(
                    aud.to_owned(),
                    scopes.split(',').map(str::to_owned).collect(),
                );
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let missing = |f: &str| format!("{f} is required");
    let tls = lanyard_examples::pki::server_config_from_files(
        &cert.ok_or(missing("--cert"))?,
        &key.ok_or(missing("--key"))?,
        &[b"http/1.1"],
    )?;
    let issuer = start(IssuerConfig {
        name: name.ok_or(missing("--name"))?,
        bind: listen.parse()?,
        tls,
        workload_api: wl.ok_or(missing("--workload-api"))?,
        allowed_prefix: prefix.ok_or(missing("--allowed-prefix"))?,
        audiences,
        ttl,
    })
    .await?;
    for (owner, path) in &owners {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let token = issuer.mint_owner(owner, 3600)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(token.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("listening on {}", issuer.addr);
    lanyard_examples::log(&format!("issuer: token endpoint {}/token", issuer.url));
    std::future::pending::<()>().await;
    Ok(())
}
