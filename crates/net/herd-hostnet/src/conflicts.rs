//! Other firewalls that stop bridged traffic: with `br_netfilter` on, traffic between two
//! instances on one bridge also passes the IPv4 `forward` hook, so a forward chain whose
//! policy is `drop` (Docker leaves one: `iptables -P FORWARD DROP`) silently cuts instances
//! off from each other and from the internet. herd does not change other software's rules; it
//! finds them and says what to do.

use crate::security::BRIDGE_NF_CALL;
use std::process::Command;

/// The forward chains of `ruleset` (`nft list ruleset`'s text) with policy drop, as
/// `table FAMILY NAME chain NAME`, leaving out tables whose name starts with `skip`.
pub fn forward_drops(ruleset: &str, skip: &str) -> Vec<String> {
    let (mut table, mut chain) = (String::new(), String::new());
    let mut out = Vec::new();
    for line in ruleset.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, "{"] => table = format!("{family} {name}"),
            ["chain", name, "{", ..] => chain = (*name).to_string(),
            _ => {}
        }
        let own = table.split_whitespace().nth(1).is_some_and(|n| n.starts_with(skip));
        if !own && line.contains("hook forward") && line.contains("policy drop") {
            out.push(format!("table {table} chain {chain}"));
        }
    }
    out
}

/// What blocks bridged traffic in this network namespace: forward chains with policy drop,
/// when br_netfilter hands bridged traffic to them. Each entry says where and what to do.
pub fn check(own_prefix: &str) -> Vec<String> {
    if !std::fs::read_to_string(BRIDGE_NF_CALL).is_ok_and(|v| v.trim() == "1") {
        return Vec::new();
    }
    let fix = "allow herd's bridges (e.g. `nft insert rule ... iifname \"hb*\" accept` and `oifname \"hb*\" accept` \
               in that chain, or `iptables -I DOCKER-USER -i hb+ -j ACCEPT` and `-o hb+`), or turn \
               net.bridge.bridge-nf-call-iptables off if no network security group is used";
    let mut found = Vec::new();
    if let Ok(out) = Command::new("nft").args(["list", "ruleset"]).output() {
        for c in forward_drops(&String::from_utf8_lossy(&out.stdout), own_prefix) {
            found.push(format!("{c} drops forwarded traffic by default, and br_netfilter sends bridged instance traffic through it: {fix}"));
        }
    }
    // Legacy iptables keeps its own tables, which `nft` does not show.
    if let Ok(out) = Command::new("iptables-legacy").args(["-S", "FORWARD"]).output() {
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "-P FORWARD DROP") {
            found.push(format!("iptables (legacy) FORWARD policy is DROP, and br_netfilter sends bridged instance traffic through it: {fix}"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_drop_policy_is_found_and_our_own_tables_are_not() {
        let text = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n\
                    \tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter jump DOCKER-USER\n\t}\n}\n\
                    table ip herd_abc_nsg {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n\
                    table inet other {\n\tchain fwd {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n}\n";
        assert_eq!(forward_drops(text, "herd_"), ["table ip filter chain FORWARD"]);
        assert!(forward_drops("", "herd_").is_empty());
    }
}
