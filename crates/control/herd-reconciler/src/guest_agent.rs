//! Recording guest agents that answered at boot.
//!
//! Why: an image imported without saying whether it runs the QEMU guest agent (a disk, most
//! often) should not need re-importing once it turns out to have one. The VM driver probes the
//! agent at each boot of such an image and reports the instances whose agent answered
//! (`Driver::guest_agents_answered`); each pass records the agent on the image version they
//! were built from, so later VMs wait for it and extension changes run in place. Only answers
//! are recorded: a silent agent never turns into "absent", and an explicit answer given at
//! import is kept.

use herd_model::image::{Image, ImageSource};
use herd_model::InstanceKey;
use herd_state::Versioned as Object;

/// One image write: the image as it becomes, its store key and the revision it was read at,
/// and the instance whose agent answered (for the activity log).
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub key: String,
    pub revision: u64,
    pub image: Image,
    pub instance: InstanceKey,
}

/// The image writes that `answered` calls for: each image with an unknown agent that an
/// instance in `answered` was built from (matched by its source, which names one image
/// version), once.
pub fn records(images: &[Object<Image>], answered: &[(InstanceKey, ImageSource)]) -> Vec<AgentRecord> {
    let mut out: Vec<AgentRecord> = Vec::new();
    for (instance, source) in answered {
        let Some(obj) = images.iter().find(|o| o.value.source == *source) else { continue };
        if out.iter().any(|r| r.key == obj.key) {
            continue;
        }
        let mut image = obj.value.clone();
        if image.agent_answered() {
            out.push(AgentRecord { key: obj.key.clone(), revision: obj.revision, image, instance: instance.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: &str, agent: Option<bool>) -> Object<Image> {
        let urn = format!("Herd:Disk:1:{version}");
        Object {
            key: urn.to_ascii_lowercase(),
            revision: 7,
            create_revision: 7,
            value: Image {
                id: format!("/images/{urn}"),
                urn,
                publisher: "Herd".into(),
                offer: "Disk".into(),
                sku: "1".into(),
                version: version.into(),
                source: disk(version),
                guest_agent: agent,
                digest: None,
                created_at: chrono::Utc::now(),
            },
        }
    }

    fn disk(version: &str) -> ImageSource {
        ImageSource::Disk { path: format!("/gallery/herd_disk_1_{version}/disk.qcow2"), format: "qcow2".into() }
    }

    fn key(id: u64) -> InstanceKey {
        InstanceKey::parse_path(&format!("rg/web/{id}")).unwrap()
    }

    #[test]
    fn an_answer_records_the_agent_on_the_unknown_image_it_came_from() {
        let images = vec![image("1.0.0", None), image("1.0.1", None)];
        let r = records(&images, &[(key(3), disk("1.0.1")), (key(4), disk("1.0.1"))]);
        assert_eq!(r.len(), 1, "once per image, however many instances answered");
        assert_eq!(r[0].key, "herd:disk:1:1.0.1");
        assert_eq!(r[0].revision, 7, "a compare-and-swap on the revision read");
        assert_eq!(r[0].image.guest_agent, Some(true));
        assert_eq!(r[0].instance, key(3));
    }

    #[test]
    fn no_answer_records_nothing_and_explicit_answers_stay() {
        let images = vec![image("1.0.0", None), image("1.0.1", Some(false)), image("1.0.2", Some(true))];
        assert!(records(&images, &[]).is_empty(), "silence never records 'absent'");
        assert!(records(&images, &[(key(1), disk("1.0.1"))]).is_empty(), "--guest-agent false is kept");
        assert!(records(&images, &[(key(1), disk("1.0.2"))]).is_empty(), "already known");
        assert!(records(&images, &[(key(1), disk("9.9.9"))]).is_empty(), "an image deleted meanwhile");
    }
}
