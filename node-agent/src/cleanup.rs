//! `wgmesh-node-agent cleanup`: removes what the agent installed. Safe to run twice.

use std::path::Path;

use crate::netlink::Netlink;

/// What to remove.
#[derive(Clone, Debug)]
pub struct CleanupPlan<'a> {
    pub interface: &'a str,
    pub table: u32,
    pub rule_priority: u32,
    pub readiness_path: &'a Path,
    pub public_key_file: Option<&'a Path>,
    pub private_key: Option<&'a Path>,
}

/// Removes rules, routes, the underlay guard, the interface (its engine exits when the TUN
/// goes), the readiness and key files. Returns one message per thing that could not be removed.
pub fn cleanup(p: &CleanupPlan) -> Vec<String> {
    let mut errors = Vec::new();
    let mut nl = match Netlink::new() {
        Ok(nl) => Some(nl),
        Err(e) => {
            errors.push(format!("netlink: {e}"));
            None
        }
    };
    if let Some(nl) = nl.as_mut() {
        // the rule first: without it nothing uses the table, whatever is left in it
        match nl.rules(p.table, p.rule_priority) {
            Ok(rules) => {
                for r in &rules {
                    match nl.delete_rule(r) {
                        Ok(()) => tracing::info!(
                            priority = r.priority,
                            table = r.table,
                            ipv6 = r.v6,
                            "removed rule"
                        ),
                        Err(e) => errors.push(format!("delete rule {r:?}: {e}")),
                    }
                }
            }
            Err(e) => errors.push(format!("list rules: {e}")),
        }
        match nl.routes(p.table) {
            Ok(routes) => {
                for r in &routes {
                    if let Err(e) = nl.delete_route(r) {
                        errors.push(format!("delete route {}: {e}", r.dst));
                    }
                }
                tracing::info!(count = routes.len(), table = p.table, "removed routes");
            }
            Err(e) => errors.push(format!("list routes: {e}")),
        }
        match nl.link(p.interface) {
            Ok(Some(l)) => match nl.delete_link(l.index) {
                Ok(()) => tracing::info!(
                    interface = p.interface,
                    "removed interface; its engine exits"
                ),
                Err(e) => errors.push(format!("delete interface {}: {e}", p.interface)),
            },
            Ok(None) => {}
            Err(e) => errors.push(format!("list links: {e}")),
        }
    }
    // the guard last: until it goes, nothing to the pod network leaves outside the tunnel
    match crate::guard::Guard::new("nft".into()).remove() {
        Ok(true) => tracing::info!(table = crate::guard::TABLE, "removed the underlay guard"),
        Ok(false) => {}
        Err(e) => errors.push(e.to_string()),
    }
    let mut files = vec![p.readiness_path];
    files.extend(p.public_key_file);
    files.extend(p.private_key);
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => tracing::info!(path = %f.display(), "removed file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", f.display())),
        }
    }
    errors
}
