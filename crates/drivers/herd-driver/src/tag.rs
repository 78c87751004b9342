//! The driver tag: how every instance of one server data dir is marked (process environment,
//! instance directory's `tag` file, QEMU argv marker), derived from the data dir's cluster id.
//!
//! Why here: the server creates the cluster id, and the benchmarks and the walkthrough runner
//! read the tag back to find (and clean up) a data dir's instances; they share these helpers
//! through the driver crate they all already depend on.

use std::path::Path;

/// The cluster id's file in the data dir.
pub const CLUSTER_ID_FILE: &str = "cluster-id";

/// The driver tag of a new cluster: in every process instance's environment and directory,
/// and (hashed) in every QEMU's argv marker.
pub fn driver_tag(cluster_id: &str) -> String {
    format!("herd:{cluster_id}")
}

/// The cluster id (first line, trimmed) and the driver tag of a `cluster-id` file's text: the
/// `legacy-tag <tag>` line's tag when there is one, else the id's [`driver_tag`].
pub fn parse_cluster_file(text: &str) -> (String, String) {
    let mut lines = text.lines();
    let id = lines.next().unwrap_or("").trim().to_string();
    let tag = lines.find_map(|l| l.strip_prefix("legacy-tag ")).map_or_else(|| driver_tag(&id), str::to_string);
    (id, tag)
}

/// The driver tag of the cluster whose data dir is `data_dir`, if it has a cluster id (for
/// finding its process instances in `/proc`).
pub fn tag_of(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(CLUSTER_ID_FILE)).ok()?;
    text.lines().next()?;
    Some(parse_cluster_file(&text).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_ids_unless_a_legacy_tag_is_kept() {
        assert_eq!(parse_cluster_file("abc\n"), ("abc".to_string(), "herd:abc".to_string()));
        assert_eq!(parse_cluster_file("abc\nlegacy-tag herd:/data\n"), ("abc".to_string(), "herd:/data".to_string()));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tag_of(dir.path()), None);
        std::fs::write(dir.path().join(CLUSTER_ID_FILE), "").unwrap();
        assert_eq!(tag_of(dir.path()), None);
        std::fs::write(dir.path().join(CLUSTER_ID_FILE), "f00d\n").unwrap();
        assert_eq!(tag_of(dir.path()).as_deref(), Some("herd:f00d"));
    }
}
