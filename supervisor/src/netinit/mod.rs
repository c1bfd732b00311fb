//! `lanyard init`: the pod init container's job. Installs the network
//! namespace's redirection rules for transparent interception, atomically
//! and idempotently, as one nftables table (`table inet lanyard`, IPv4 and
//! IPv6 together).
//!
//! nat output: Lanyard's own uid, loopback, the excluded CIDRs and ports and
//! DNS to the pod's resolvers go out as they are; all other TCP is redirected
//! to Lanyard's transparent port. filter output: loopback, Lanyard's uid,
//! redirected flows (`ct status dnat`), DNS to the resolvers, the exclusions
//! and the ICMPv6 that IPv6 needs (neighbour discovery) are allowed; every
//! other packet is rejected, UDP included, so QUIC falls back to TCP.
//!
//! The ruleset is applied with one `nft -f -` transaction that creates,
//! deletes and re-creates the table: running it twice leaves one copy.
//! `--backend iptables` installs the same rules through iptables-restore
//! (see [`iptables`]).

pub mod iptables;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use lanyard_proxy::parse::Cidr;

/// The table every rule lives in.
pub const TABLE: &str = "lanyard";

/// `lanyard init` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// How the rules are installed.
    #[arg(long, value_enum, default_value_t = Backend::Nftables)]
    pub backend: Backend,
    /// uid Lanyard runs as: its traffic is never redirected.
    #[arg(long, required_unless_present = "cleanup")]
    pub proxy_uid: Option<u32>,
    /// Lanyard's transparent listener port.
    #[arg(long, default_value_t = 15001)]
    pub port: u16,
    /// The agent's uid, when known: refused if it equals `--proxy-uid`.
    #[arg(long)]
    pub agent_uid: Option<u32>,
    /// Destinations never redirected (CIDR or address; repeatable).
    #[arg(long = "exclude-cidr")]
    pub exclude_cidrs: Vec<String>,
    /// Destination ports never redirected (repeatable).
    #[arg(long = "exclude-port")]
    pub exclude_ports: Vec<u16>,
    /// Ports only Lanyard's uid may connect to, on any address of the pod,
    /// loopback included (repeatable): the admin listener, whose `/revoke`
    /// and `/debug` are not the agent's to use. Connections from outside the
    /// pod (kubelet probes, Prometheus) are not affected.
    #[arg(long = "admin-port")]
    pub admin_ports: Vec<u16>,
    /// DNS servers the agent may reach on port 53 (repeatable; default: the
    /// nameservers in /etc/resolv.conf).
    #[arg(long = "dns")]
    pub dns: Vec<IpAddr>,
    /// Install IPv4 redirection only; IPv6 traffic is rejected.
    #[arg(long)]
    pub no_ipv6: bool,
    /// Print the ruleset instead of installing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the ruleset.
    #[arg(long)]
    pub cleanup: bool,
}

/// The rule installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Native nftables: one `table inet lanyard`, one transaction for both families.
    Nftables,
    /// `iptables-restore`/`ip6tables-restore` into `LANYARD_OUTPUT` chains
    /// (whichever iptables the system has: nf_tables or legacy).
    Iptables,
}

/// Everything the ruleset depends on, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Lanyard's uid.
    pub proxy_uid: u32,
    /// Transparent port.
    pub port: u16,
    /// Excluded destinations.
    pub exclude: Vec<Cidr>,
    /// Excluded destination ports.
    pub exclude_ports: Vec<u16>,
    /// Ports only Lanyard's uid may connect to.
    pub admin_ports: Vec<u16>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// Redirect IPv6 too.
    pub ipv6: bool,
}

impl Rules {
    /// Validates the arguments; errors name the flag.
    pub fn from_args(a: &InitArgs, resolv_conf: &str) -> Result<Self, String> {
        let Some(proxy_uid) = a.proxy_uid else {
            return Err("--proxy-uid: required".into());
        };
        if proxy_uid == 0 {
            return Err("--proxy-uid: 0 would exempt every root process from redirection; run Lanyard as a uid of its own".into());
        }
        if a.agent_uid == Some(proxy_uid) {
            return Err(format!(
                "--agent-uid: the agent must not run as Lanyard's uid {proxy_uid}: its traffic would bypass the proxy"
            ));
        }
        if a.port == 0 {
            return Err("--port: 0 is not a port".into());
        }
        let exclude = a
            .exclude_cidrs
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("--exclude-cidr: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if a.exclude_ports.contains(&0) {
            return Err("--exclude-port: 0 is not a port".into());
        }
        let dns = if a.dns.is_empty() {
            resolv_conf
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .filter_map(|v| v.trim().parse::<IpAddr>().ok())
                .collect()
        } else {
            a.dns.clone()
        };
        let mut exclude_ports = a.exclude_ports.clone();
        exclude_ports.sort_unstable();
        exclude_ports.dedup();
        if a.admin_ports.contains(&0) {
            return Err("--admin-port: 0 is not a port".into());
        }
        if a.admin_ports.contains(&a.port) {
            return Err(format!(
                "--admin-port: {} is the transparent port, which the agent's traffic is redirected to",
                a.port
            ));
        }
        let mut admin_ports = a.admin_ports.clone();
        admin_ports.sort_unstable();
        admin_ports.dedup();
        Ok(Self {
            proxy_uid,
            port: a.port,
            exclude,
            exclude_ports,
            admin_ports,
            dns,
            ipv6: !a.no_ipv6,
        })
    }

    /// The nftables script: one transaction that replaces the table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let set = |s: &mut String, name: &str, ty: &str, interval: bool, elems: Vec<String>| {
            let _ = write!(s, "\tset {name} {{\n\t\ttype {ty};\n");
            if interval {
                s.push_str("\t\tflags interval;\n");
            }
            if !elems.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
            }
            s.push_str("\t}\n");
        };
        let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) = self.exclude.iter().partition(|c| c.net.is_ipv4());
        let (dns4, dns6): (Vec<&IpAddr>, Vec<&IpAddr>) =
            self.dns.iter().partition(|ip| ip.is_ipv4());
        // Creating first makes the delete valid on a fresh namespace: the
        // three statements replace the table in one transaction.
        let _ = writeln!(
            s,
            "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{"
        );
        set(
            &mut s,
            "excluded_v4",
            "ipv4_addr",
            true,
            v4.iter().map(ToString::to_string).collect(),
        );
        set(
            &mut s,
            "excluded_v6",
            "ipv6_addr",
            true,
            v6.iter().map(ToString::to_string).collect(),
        );
        set(
            &mut s,
            "excluded_ports",
            "inet_service",
            false,
            self.exclude_ports.iter().map(ToString::to_string).collect(),
        );
        set(
            &mut s,
            "dns_v4",
            "ipv4_addr",
            false,
            dns4.iter().map(ToString::to_string).collect(),
        );
        set(
            &mut s,
            "dns_v6",
            "ipv6_addr",
            false,
            dns6.iter().map(ToString::to_string).collect(),
        );
        let uid = self.proxy_uid;
        let port = self.port;
        s.push_str(
            "\tchain nat_output {\n\t\ttype nat hook output priority -100; policy accept;\n",
        );
        let _ = writeln!(s, "\t\tmeta skuid {uid} return");
        s.push_str("\t\toifname \"lo\" return\n");
        s.push_str("\t\tip daddr 127.0.0.0/8 return\n\t\tip6 daddr ::1 return\n");
        s.push_str("\t\tip daddr @excluded_v4 return\n\t\tip6 daddr @excluded_v6 return\n");
        s.push_str("\t\ttcp dport @excluded_ports return\n");
        s.push_str(
            "\t\tip daddr @dns_v4 tcp dport 53 return\n\t\tip6 daddr @dns_v6 tcp dport 53 return\n",
        );
        if self.ipv6 {
            let _ = writeln!(s, "\t\tmeta l4proto tcp redirect to :{port}");
        } else {
            let _ = writeln!(
                s,
                "\t\tmeta nfproto ipv4 meta l4proto tcp redirect to :{port}"
            );
        }
        s.push_str("\t}\n");
        s.push_str("\tchain filter_output {\n\t\ttype filter hook output priority filter; policy accept;\n");
        if !self.admin_ports.is_empty() {
            // Before the loopback accept: the admin listener is on this pod's own addresses.
            let ports: Vec<String> = self.admin_ports.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "\t\ttcp dport {{ {} }} meta skuid != {uid} reject with tcp reset",
                ports.join(", ")
            );
        }
        s.push_str("\t\toifname \"lo\" accept\n");
        let _ = writeln!(s, "\t\tmeta skuid {uid} accept");
        s.push_str("\t\tct status dnat accept\n");
        s.push_str("\t\tip daddr @dns_v4 meta l4proto { tcp, udp } th dport 53 accept\n");
        s.push_str("\t\tip6 daddr @dns_v6 meta l4proto { tcp, udp } th dport 53 accept\n");
        if self.ipv6 {
            // Without neighbour discovery no IPv6 packet leaves at all.
            s.push_str("\t\ticmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept\n");
        }
        s.push_str("\t\tip daddr @excluded_v4 accept\n\t\tip6 daddr @excluded_v6 accept\n");
        s.push_str("\t\tmeta l4proto { tcp, udp } th dport @excluded_ports accept\n");
        s.push_str("\t\tmeta l4proto tcp reject with tcp reset\n");
        s.push_str("\t\treject with icmpx admin-prohibited\n");
        s.push_str("\t}\n}\n");
        s
    }
}

/// The script that removes the table (and is harmless when there is none).
pub fn cleanup_script() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Whether this network namespace has IPv6: the kernel makes IPv6 sockets
/// (not booted with `ipv6.disable=1`) and the namespace has not switched it
/// off. Asked of the kernel rather than of /proc alone, which a minimal
/// container may not mount.
fn ipv6_available() -> bool {
    use rustix::net::{AddressFamily, SocketType, socket};
    if socket(AddressFamily::INET6, SocketType::DGRAM, None).is_err() {
        return false;
    }
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .map_or(true, |v| v.trim() != "1")
}

/// Runs `tool args...` with `input` on stdin; its stderr becomes the error.
fn feed(tool: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("cannot write the rules to {tool}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn apply(script: &str) -> Result<(), String> {
    feed("nft", &["-f", "-"], script)
}

/// The families the iptables backend touches: IPv6 whenever the namespace
/// has it (to reject it when `--no-ipv6`), or when asked to redirect it.
fn iptables_families(rules: &Rules) -> Vec<iptables::Family> {
    let mut f = vec![iptables::Family::V4];
    if rules.ipv6 || ipv6_available() {
        f.push(iptables::Family::V6);
    }
    f
}

fn install_iptables(rules: &Rules, dry_run: bool) -> Result<Option<String>, String> {
    use iptables::{Family, Present};
    let families = if dry_run {
        vec![Family::V4, Family::V6]
    } else {
        iptables_families(rules)
    };
    let mut out = String::new();
    for family in families {
        let present = if dry_run {
            Present::default()
        } else {
            iptables::jumps(family)?
        };
        let input = iptables::render(rules, family, present);
        if dry_run {
            let tool = match family {
                Family::V4 => "iptables-restore",
                Family::V6 => "ip6tables-restore",
            };
            let _ = writeln!(out, "# {tool} --noflush");
            out.push_str(&input);
        } else {
            iptables::restore(family, &input)?;
        }
    }
    Ok(dry_run.then_some(out))
}

fn cleanup_iptables() -> Result<(), String> {
    use iptables::Family;
    for family in [Family::V4, Family::V6] {
        if family == Family::V6 && !ipv6_available() {
            continue;
        }
        let input = iptables::render_cleanup(iptables::jumps(family)?, iptables::chains(family)?);
        iptables::restore(family, &input)?;
    }
    Ok(())
}

/// Runs `lanyard init`; returns the exit status.
pub fn run(a: &InitArgs) -> i32 {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let result = (|| -> Result<Option<String>, (i32, String)> {
        if a.cleanup {
            return match (a.backend, a.dry_run) {
                (Backend::Nftables, true) => Ok(Some(cleanup_script())),
                (Backend::Nftables, false) => {
                    apply(&cleanup_script()).map(|()| None).map_err(|e| (1, e))
                }
                (Backend::Iptables, true) => Ok(Some(format!(
                    "# iptables-restore --noflush / ip6tables-restore --noflush, for what exists\n{}",
                    iptables::render_cleanup(
                        iptables::Present {
                            nat: true,
                            filter: true
                        },
                        iptables::Present {
                            nat: true,
                            filter: true
                        },
                    )
                ))),
                (Backend::Iptables, false) => cleanup_iptables().map(|()| None).map_err(|e| (1, e)),
            };
        }
        let rules = Rules::from_args(a, &resolv).map_err(|e| (crate::EXIT_CONFIG, e))?;
        if rules.ipv6 && !ipv6_available() && !a.dry_run {
            return Err((
                crate::EXIT_CONFIG,
                "IPv6 is not available in this network namespace: pass --no-ipv6 to redirect IPv4 only (IPv6 is then rejected)".into(),
            ));
        }
        if a.backend == Backend::Iptables {
            return install_iptables(&rules, a.dry_run).map_err(|e| (1, e));
        }
        let script = rules.render();
        if a.dry_run {
            return Ok(Some(script));
        }
        apply(&script).map_err(|e| (1, e))?;
        Ok(None)
    })();
    match result {
        Ok(Some(text)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            0
        }
        Ok(None) => 0,
        Err((code, why)) => {
            #[allow(clippy::print_stderr, reason = "the CLI's error report")]
            {
                eprintln!("lanyard init: {why}");
            }
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules every golden file is rendered from.
    pub(super) fn golden_rules(no_ipv6: bool) -> Rules {
        let mut a = args();
        a.no_ipv6 = no_ipv6;
        Rules::from_args(&a, RESOLV).unwrap()
    }

    const RESOLV: &str = "search svc.cluster.local\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:5\n";

    fn args() -> InitArgs {
        InitArgs {
            backend: Backend::Nftables,
            proxy_uid: Some(1337),
            port: 15001,
            agent_uid: Some(1000),
            exclude_cidrs: vec!["192.0.2.0/24".into(), "2001:db8:1::/48".into()],
            exclude_ports: vec![9090, 9090, 15020],
            admin_ports: vec![9901],
            dns: vec![],
            no_ipv6: false,
            dry_run: true,
            cleanup: false,
        }
    }

    #[test]
    fn the_ruleset_matches_the_golden_file() {
        let resolv = RESOLV;
        let rules = Rules::from_args(&args(), resolv).unwrap();
        let golden = include_str!("../../tests/golden/init.nft");
        assert_eq!(rules.render(), golden);
        let mut v4 = args();
        v4.no_ipv6 = true;
        let rules = Rules::from_args(&v4, resolv).unwrap();
        assert_eq!(
            rules.render(),
            include_str!("../../tests/golden/init-no-ipv6.nft")
        );
    }

    #[test]
    fn bad_arguments_name_their_flag() {
        let resolv = "";
        for (change, flag) in [
            (
                Box::new(|a: &mut InitArgs| a.agent_uid = Some(1337)) as Box<dyn Fn(&mut InitArgs)>,
                "--agent-uid",
            ),
            (
                Box::new(|a: &mut InitArgs| a.proxy_uid = Some(0)),
                "--proxy-uid",
            ),
            (
                Box::new(|a: &mut InitArgs| a.exclude_cidrs = vec!["192.0.2.1/24".into()]),
                "--exclude-cidr",
            ),
            (
                Box::new(|a: &mut InitArgs| a.exclude_cidrs = vec!["nope".into()]),
                "--exclude-cidr",
            ),
            (
                Box::new(|a: &mut InitArgs| a.exclude_ports = vec![0]),
                "--exclude-port",
            ),
        ] {
            let mut a = args();
            change(&mut a);
            let e = Rules::from_args(&a, resolv).unwrap_err();
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
    }
}
