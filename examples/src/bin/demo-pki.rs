//! `demo-pki --dir DIR NAME...`: a demo CA (`DIR/ca.pem`) and, per NAME, a
//! server certificate chain `DIR/NAME.pem` with its key `DIR/NAME-key.pem`.

use std::path::PathBuf;

fn main() -> Result<(), lanyard_examples::pki::Error> {
    let mut args = std::env::args().skip(1);
    let (Some(flag), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: demo-pki --dir DIR NAME...".into());
    };
    if flag != "--dir" {
        return Err("usage: demo-pki --dir DIR NAME...".into());
    }
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let pki = lanyard_examples::pki::Pki::new("Lanyard demo CA")?;
    pki.write_ca(&dir.join("ca.pem"))?;
    for name in args {
        let leaf = pki.leaf(&[name.as_str()])?;
        std::fs::write(
            dir.join(format!("{name}.pem")),
            format!("{}{}", leaf.cert_pem, pki.ca_pem()),
        )?;
        std::fs::write(dir.join(format!("{name}-key.pem")), &leaf.key_pem)?;
    }
    Ok(())
}
