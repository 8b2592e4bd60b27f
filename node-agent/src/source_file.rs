//! The `file` source: a directory of YAML (or JSON) files holding `WireGuardPeer` documents
//! (and optionally `Node` documents), re-read when a file's name, size or mtime changes.
//! A file that stops parsing keeps its last good contents, so a half-written file never
//! makes a peer disappear for a moment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;
use wgmesh_api::WireGuardPeer;

/// One object found in the directory.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    Peer(Box<WireGuardPeer>),
    Node(Box<Node>),
}

/// Why the directory could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read peer directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses all YAML documents of one file. Returns the objects and one message per document
/// that was skipped (unknown kind, or not a valid object). A syntax error fails the file.
pub fn parse_documents(text: &str) -> Result<(Vec<Document>, Vec<String>), String> {
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| e.to_string())?;
        collect(value, i, &mut docs, &mut skipped);
    }
    Ok((docs, skipped))
}

fn collect(
    value: serde_yaml::Value,
    i: usize,
    docs: &mut Vec<Document>,
    skipped: &mut Vec<String>,
) {
    if value.is_null() {
        return;
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_owned();
    match kind.as_str() {
        "WireGuardPeer" => match serde_yaml::from_value::<WireGuardPeer>(value) {
            Ok(p) => docs.push(Document::Peer(Box::new(p))),
            Err(e) => skipped.push(format!("document {i}: not a valid WireGuardPeer: {e}")),
        },
        "Node" => match serde_yaml::from_value::<Node>(value) {
            Ok(n) => docs.push(Document::Node(Box::new(n))),
            Err(e) => skipped.push(format!("document {i}: not a valid Node: {e}")),
        },
        // `kubectl get -o yaml` prints lists
        "List" | "WireGuardPeerList" | "NodeList" => {
            if let Some(items) = value.get("items").and_then(|v| v.as_sequence()) {
                for item in items.clone() {
                    collect(item, i, docs, skipped);
                }
            }
        }
        other => skipped.push(format!(
            "document {i}: kind {other:?} is neither WireGuardPeer nor Node"
        )),
    }
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Polls a directory; see the module docs.
pub struct FileSource {
    dir: PathBuf,
    fingerprint: Option<Fingerprint>,
    last_good: BTreeMap<PathBuf, Vec<Document>>,
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSource {
            dir: dir.into(),
            fingerprint: None,
            last_good: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The documents, if anything changed since the last call (always on the first call).
    pub fn poll(&mut self) -> Result<Option<Vec<Document>>, SourceError> {
        let fp = self.scan()?;
        if self.fingerprint.as_ref() == Some(&fp) {
            return Ok(None);
        }
        let mut next = BTreeMap::new();
        for (path, _, _) in &fp {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_documents(&t));
            match parsed {
                Ok((docs, skipped)) => {
                    for s in skipped {
                        tracing::warn!(file = %path.display(), "{s}");
                    }
                    next.insert(path.clone(), docs);
                }
                Err(e) => {
                    let kept = self.last_good.get(path).cloned();
                    tracing::warn!(file = %path.display(), error = %e, kept_previous = kept.is_some(), "cannot parse peer file");
                    if let Some(docs) = kept {
                        next.insert(path.clone(), docs);
                    }
                }
            }
        }
        self.last_good = next;
        self.fingerprint = Some(fp);
        Ok(Some(self.last_good.values().flatten().cloned().collect()))
    }

    fn scan(&self) -> Result<Fingerprint, SourceError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| SourceError::ReadDir {
            path: self.dir.clone(),
            source,
        })?;
        let mut fp = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // editors' and atomic writers' temp files start with a dot
            let wanted = !name.starts_with('.')
                && [".yaml", ".yml", ".json"]
                    .iter()
                    .any(|ext| name.ends_with(ext));
            if !wanted {
                continue;
            }
            let path = entry.path();
            // follow symlinks: Kubernetes ConfigMap volumes are symlink farms
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                fp.push((path, meta.len(), meta.modified().ok()));
            }
        }
        fp.sort();
        Ok(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "apiVersion: wgmesh.io/v1alpha1\nkind: WireGuardPeer\nmetadata:\n  name: laptop\nspec:\n  publicKey: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n  allowedIPs: [10.8.0.0/24]\n";

    #[test]
    fn parses_multi_document_files_and_reports_skipped_ones() {
        let text = format!("{PEER}---\nkind: ConfigMap\n---\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n");
        let (docs, skipped) = parse_documents(&text).expect("parse");
        assert_eq!(docs.len(), 2);
        assert!(matches!(&docs[0], Document::Peer(p) if p.spec.allowed_ips == ["10.8.0.0/24"]));
        assert!(matches!(&docs[1], Document::Node(_)));
        assert_eq!(skipped.len(), 1);
        assert!(parse_documents("kind: [unclosed").is_err());
        let (docs, skipped) = parse_documents("kind: WireGuardPeer\nspec: 3\n").expect("parse");
        assert!(docs.is_empty() && skipped.len() == 1);
    }

    #[test]
    fn hostile_yaml_is_refused_not_expanded() {
        // A file that nests without end, or multiplies aliases ("billion laughs"), fails as a
        // file with serde_yaml's limits instead of exhausting the agent's stack or memory.
        let deep = "[".repeat(100_000);
        let e = parse_documents(&deep).expect_err("too deep");
        assert!(e.contains("recursion limit"), "{e}");
        let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for c in b'b'..=b'j' {
            let (p, c) = ((c - 1) as char, c as char);
            laughs.push_str(&format!(
                "{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            ));
        }
        laughs.push_str("kind: WireGuardPeer\n");
        let e = parse_documents(&laughs).expect_err("alias bomb");
        assert!(e.contains("repetition limit"), "{e}");
    }

    #[test]
    fn notices_changes_and_keeps_the_last_good_version_of_a_broken_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut src = FileSource::new(d.path());
        assert_eq!(src.poll().expect("poll").map(|v| v.len()), Some(0));
        assert!(src.poll().expect("poll").is_none(), "nothing changed");
        std::fs::write(d.path().join("laptop.yaml"), PEER).expect("write");
        std::fs::write(d.path().join(".laptop.yaml.tmp"), "junk").expect("write");
        std::fs::write(d.path().join("README"), "junk").expect("write");
        assert_eq!(src.poll().expect("poll").map(|v| v.len()), Some(1));
        // broken rewrite (different size): the previous contents stay
        std::fs::write(d.path().join("laptop.yaml"), "kind: [").expect("write");
        assert_eq!(src.poll().expect("poll").map(|v| v.len()), Some(1));
        std::fs::remove_file(d.path().join("laptop.yaml")).expect("rm");
        assert_eq!(src.poll().expect("poll").map(|v| v.len()), Some(0));
        let mut missing = FileSource::new(d.path().join("nope"));
        assert!(missing.poll().is_err());
    }
}
