//! `demo-upstream`: an HTTPS echo server for the quickstart demo.
//!
//! `demo-upstream --dir DIR --host NAME [--name LABEL] [--bind ADDR]` creates a
//! demo CA in `DIR/upstream-ca.pem`, serves HTTPS for `NAME` on `ADDR`
//! (default 127.0.0.1 on a free port), prints `listening on ADDR` and echoes
//! what each request carried.

use std::path::PathBuf;

use lanyard_examples::{echo, pki::Pki};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lanyard_examples::pki::Error> {
    let mut dir = None;
    let mut host = None;
    let mut name = String::from("upstream");
    let mut bind: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--host" => host = args.next(),
            "--name" => name = args.next().unwrap_or(name),
            "--bind" => bind = args.next().unwrap_or_default().parse()?,
            other => return Err(format!("unknown argument {other}; usage: demo-upstream --dir DIR --host NAME [--name LABEL] [--bind ADDR]").into()),
        }
    }
    let (Some(dir), Some(host)) = (dir, host) else {
        return Err(
            "usage: demo-upstream --dir DIR --host NAME [--name LABEL] [--bind ADDR]".into(),
        );
    };
    std::fs::create_dir_all(&dir)?;
    let pki = Pki::new("Lanyard demo upstream CA")?;
    pki.write_ca(&dir.join("upstream-ca.pem"))?;
    let tls = pki
        .leaf(&[host.as_str()])?
        .server_config(&[b"h2", b"http/1.1"])?;
    let up = echo::start(bind, &name, Some(tls)).await?;
    println!("listening on {}", up.addr);
    std::future::pending::<()>().await;
    Ok(())
}
