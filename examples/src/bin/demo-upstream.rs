//! `demo-upstream`: an HTTPS echo server for the quickstart demo.
//!
//! `demo-upstream --dir DIR --host NAME... [--name LABEL] [--bind ADDR] [--extras]`
//! creates a demo CA in `DIR/upstream-ca.pem`, serves HTTPS for every `NAME`
//! (wildcards such as `*.bench.test` allowed) on `ADDR` (default 127.0.0.1 on
//! a free port), prints `listening on ADDR` and echoes what each request
//! carried. `--extras` (for `bench/run`) also serves the echo over plain HTTP
//! (`plain on ADDR`) and a byte sink (`sink on ADDR`): the client sends a
//! big-endian u64 length and that many bytes, the sink answers with the
//! count it read.

use std::path::PathBuf;

use lanyard_examples::{echo, pki::Pki};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lanyard_examples::pki::Error> {
    let mut dir = None;
    let mut hosts: Vec<String> = Vec::new();
    let mut extras = false;
    let mut name = String::from("upstream");
    let mut bind: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--host" => hosts.extend(args.next()),
            "--extras" => extras = true,
            "--name" => name = args.next().unwrap_or(name),
            "--bind" => bind = args.next().unwrap_or_default().parse()?,
            other => return Err(format!("unknown argument {other}; usage: demo-upstream --dir DIR --host NAME [--name LABEL] [--bind ADDR]").into()),
        }
    }
    let (Some(dir), false) = (dir, hosts.is_empty()) else {
        return Err(
            "usage: demo-upstream --dir DIR --host NAME [--name LABEL] [--bind ADDR]".into(),
        );
    };
    std::fs::create_dir_all(&dir)?;
    let pki = Pki::new("Lanyard demo upstream CA")?;
    pki.write_ca(&dir.join("upstream-ca.pem"))?;
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let tls = pki.leaf(&names)?.server_config(&[b"h2", b"http/1.1"])?;
    let up = echo::start(bind, &name, Some(tls)).await?;
    println!("listening on {}", up.addr);
    if extras {
        let plain = echo::start(bind, &name, None).await?;
        println!("plain on {}", plain.addr);
        let sink = tokio::net::TcpListener::bind(bind).await?;
        println!("sink on {}", sink.local_addr()?);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = sink.accept().await {
                tokio::spawn(async move {
                    // A u64 length, then that many bytes; the count read is
                    // the answer. No half-close: not every proxy relays one.
                    let Ok(want) = s.read_u64().await else { return };
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0u64;
                    while total < want {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = s.write_u64(total).await;
                });
            }
        });
        std::future::pending::<()>().await;
    }
    std::future::pending::<()>().await;
    Ok(())
}
