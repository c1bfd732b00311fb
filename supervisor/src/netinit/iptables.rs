//! The iptables backend: the same rules as the nftables table, for nodes
//! whose kernel or policy rules out native nftables. Each family is one
//! `iptables-restore --noflush` transaction (`ip6tables-restore` for IPv6)
//! over a chain of Lanyard's own, `LANYARD_OUTPUT`, in the nat and filter
//! tables: declaring the chain in the restore input creates or empties it,
//! so running twice leaves one copy; the jump from `OUTPUT` is added only
//! when it is not already there. Works with either iptables binary
//! (nf_tables or legacy), whichever the image's `iptables` is.
//!
//! Unlike the nftables backend, the two families are two transactions: a
//! failure of the second leaves the first installed, and `lanyard init`
//! exits non-zero, so the pod never starts with half the rules.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::Rules;

/// The chain in both tables.
pub const CHAIN: &str = "LANYARD_OUTPUT";

/// An address family, with what differs between iptables and ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `iptables`.
    V4,
    /// IPv6: `ip6tables`.
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
    fn reject(self) -> &'static str {
        match self {
            Family::V4 => "icmp-admin-prohibited",
            Family::V6 => "icmp6-adm-prohibited",
        }
    }
    fn holds(self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
}

/// Which `OUTPUT` jumps already exist (nat, filter): the restore input adds
/// only the missing ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present {
    /// nat `OUTPUT -j LANYARD_OUTPUT` is installed.
    pub nat: bool,
    /// filter `OUTPUT -j LANYARD_OUTPUT` is installed.
    pub filter: bool,
}

/// The `iptables-restore --noflush` input for one family.
pub fn render(rules: &Rules, family: Family, present: Present) -> String {
    let mut s = String::new();
    let uid = rules.proxy_uid;
    let excluded: Vec<String> = rules
        .exclude
        .iter()
        .filter(|c| family.holds(&c.net))
        .map(ToString::to_string)
        .collect();
    let dns: Vec<String> = rules
        .dns
        .iter()
        .filter(|ip| family.holds(ip))
        .map(|ip| match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        })
        .collect();
    let redirect = family == Family::V4 || rules.ipv6;
    let rule = |s: &mut String, spec: &str| {
        let _ = writeln!(s, "-A {CHAIN} {spec}");
    };
    if redirect {
        let _ = writeln!(s, "*nat\n:{CHAIN} - [0:0]");
        rule(&mut s, &format!("-m owner --uid-owner {uid} -j RETURN"));
        rule(&mut s, "-o lo -j RETURN");
        rule(&mut s, &format!("-d {} -j RETURN", family.loopback()));
        for c in &excluded {
            rule(&mut s, &format!("-d {c} -j RETURN"));
        }
        for p in &rules.exclude_ports {
            rule(&mut s, &format!("-p tcp --dport {p} -j RETURN"));
        }
        for d in &dns {
            rule(&mut s, &format!("-d {d} -p tcp --dport 53 -j RETURN"));
        }
        rule(
            &mut s,
            &format!("-p tcp -j REDIRECT --to-ports {}", rules.port),
        );
        if !present.nat {
            let _ = writeln!(s, "-I OUTPUT 1 -j {CHAIN}");
        }
        s.push_str("COMMIT\n");
    }
    let _ = writeln!(s, "*filter\n:{CHAIN} - [0:0]");
    for p in &rules.admin_ports {
        rule(
            &mut s,
            &format!(
                "-p tcp --dport {p} -m owner ! --uid-owner {uid} -j REJECT --reject-with tcp-reset"
            ),
        );
    }
    rule(&mut s, "-o lo -j ACCEPT");
    rule(&mut s, &format!("-m owner --uid-owner {uid} -j ACCEPT"));
    rule(&mut s, "-m conntrack --ctstate DNAT -j ACCEPT");
    for d in &dns {
        for proto in ["udp", "tcp"] {
            rule(&mut s, &format!("-d {d} -p {proto} --dport 53 -j ACCEPT"));
        }
    }
    if family == Family::V6 && rules.ipv6 {
        // Without neighbour discovery no IPv6 packet leaves at all.
        for t in [
            "router-solicitation",
            "router-advertisement",
            "neighbour-solicitation",
            "neighbour-advertisement",
        ] {
            rule(&mut s, &format!("-p ipv6-icmp --icmpv6-type {t} -j ACCEPT"));
        }
    }
    for c in &excluded {
        rule(&mut s, &format!("-d {c} -j ACCEPT"));
    }
    for p in &rules.exclude_ports {
        for proto in ["tcp", "udp"] {
            rule(&mut s, &format!("-p {proto} --dport {p} -j ACCEPT"));
        }
    }
    rule(&mut s, "-p tcp -j REJECT --reject-with tcp-reset");
    rule(
        &mut s,
        &format!("-j REJECT --reject-with {}", family.reject()),
    );
    if !present.filter {
        let _ = writeln!(s, "-I OUTPUT 1 -j {CHAIN}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The restore input that removes Lanyard's chains and jumps, given what exists.
pub fn render_cleanup(jumps: Present, chains: Present) -> String {
    let mut s = String::new();
    for (table, jump, chain) in [
        ("nat", jumps.nat, chains.nat),
        ("filter", jumps.filter, chains.filter),
    ] {
        if !jump && !chain {
            continue;
        }
        let _ = writeln!(s, "*{table}");
        if jump {
            let _ = writeln!(s, "-D OUTPUT -j {CHAIN}");
        }
        if chain {
            let _ = writeln!(s, "-F {CHAIN}\n-X {CHAIN}");
        }
        s.push_str("COMMIT\n");
    }
    s
}

fn quiet(family: Family, args: &[&str]) -> Result<bool, String> {
    Command::new(family.tool())
        .args(["-w", "5"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .map_err(|e| format!("cannot run {} (install iptables): {e}", family.tool()))
}

/// Which `OUTPUT` jumps exist now.
pub fn jumps(family: Family) -> Result<Present, String> {
    Ok(Present {
        nat: quiet(family, &["-t", "nat", "-C", "OUTPUT", "-j", CHAIN])?,
        filter: quiet(family, &["-t", "filter", "-C", "OUTPUT", "-j", CHAIN])?,
    })
}

/// Which of Lanyard's chains exist now.
pub fn chains(family: Family) -> Result<Present, String> {
    Ok(Present {
        nat: quiet(family, &["-t", "nat", "-S", CHAIN])?,
        filter: quiet(family, &["-t", "filter", "-S", CHAIN])?,
    })
}

/// Feeds `input` to `iptables-restore --noflush` (or the IPv6 one).
pub fn restore(family: Family, input: &str) -> Result<(), String> {
    if input.is_empty() {
        return Ok(());
    }
    let tool = format!("{}-restore", family.tool());
    super::feed(&tool, &["--noflush", "-w", "5"], input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_input_matches_the_golden_files() {
        let rules = super::super::tests::golden_rules(false);
        let v4 = render(&rules, Family::V4, Present::default());
        let v6 = render(&rules, Family::V6, Present::default());
        assert_eq!(
            v4,
            include_str!("../../tests/golden/init-iptables-v4.rules")
        );
        assert_eq!(
            v6,
            include_str!("../../tests/golden/init-iptables-v6.rules")
        );
        let no6 = super::super::tests::golden_rules(true);
        assert_eq!(
            render(&no6, Family::V6, Present::default()),
            include_str!("../../tests/golden/init-iptables-v6-off.rules")
        );
    }

    #[test]
    fn existing_jumps_are_not_added_twice() {
        let rules = super::super::tests::golden_rules(false);
        let both = Present {
            nat: true,
            filter: true,
        };
        let again = render(&rules, Family::V4, both);
        assert!(!again.contains("-I OUTPUT"), "{again}");
        // Redeclaring the chain is what empties it for the new rules.
        assert_eq!(again.matches(":LANYARD_OUTPUT - [0:0]").count(), 2);
    }

    #[test]
    fn cleanup_removes_only_what_exists() {
        assert_eq!(render_cleanup(Present::default(), Present::default()), "");
        let only_filter = Present {
            nat: false,
            filter: true,
        };
        assert_eq!(
            render_cleanup(only_filter, only_filter),
            "*filter\n-D OUTPUT -j LANYARD_OUTPUT\n-F LANYARD_OUTPUT\n-X LANYARD_OUTPUT\nCOMMIT\n"
        );
    }
}
