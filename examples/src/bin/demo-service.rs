//! `demo-service`: a protected service of the alpha/beta demo (see `lanyard_examples::service`).
//!
//! demo-service --name alpha --cert C --key K --issuer https://issuer.demo.test:PORT
//!              --issuer-addr 127.0.0.1:PORT --ca ca.pem --scope alpha.read [--listen ADDR]

use std::path::PathBuf;

use lanyard_examples::service::{ServiceConfig, start};

#[tokio::main]
async fn main() -> Result<(), lanyard_examples::pki::Error> {
    let mut a = std::env::args().skip(1);
    let (mut name, mut cert, mut key, mut issuer, mut issuer_addr, mut ca, mut scope) =
        (None, None, None, None, None, None, None);
    let mut listen = "127.0.0.1:0".to_owned();
    while let Some(flag) = a.next() {
        let v = a.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(v),
            "--cert" => cert = Some(PathBuf::from(v)),
            "--key" => key = Some(PathBuf::from(v)),
            "--issuer" => issuer = Some(v),
            "--issuer-addr" => issuer_addr = Some(v),
            "--ca" => ca = Some(PathBuf::from(v)),
            "--scope" => scope = Some(v),
            "--listen" => listen = v,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let missing = |f: &str| format!("{f} is required");
    let issuer: String = issuer.ok_or(missing("--issuer"))?;
    let issuer_host = issuer
        .trim_start_matches("https://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let svc = start(ServiceConfig {
        name: name.ok_or(missing("--name"))?,
        bind: listen.parse()?,
        tls: lanyard_examples::pki::server_config_from_files(
            &cert.ok_or(missing("--cert"))?,
            &key.ok_or(missing("--key"))?,
            &[b"http/1.1"],
        )?,
        issuer,
        issuer_addr: issuer_addr.ok_or(missing("--issuer-addr"))?,
        issuer_host,
        jwks_path: "/jwks".into(),
        issuer_plain_http: false,
        roots: lanyard_examples::pki::read_certs(&ca.ok_or(missing("--ca"))?)?,
        scope: scope.ok_or(missing("--scope"))?,
    })
    .await?;
    println!("listening on {}", svc.addr);
    std::future::pending::<()>().await;
    Ok(())
}
