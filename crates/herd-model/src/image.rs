//! The local image gallery: images by URN, and how `latest` resolves.

use crate::ids::{ImageUrn, Version};
use serde::{Deserialize, Serialize};

/// What an image holds. The process driver uses a directory; the QEMU driver uses a disk or a
/// kernel + initrd. Paths point into the server's gallery directory, where `herd image import`
/// copied the files; they are read-only from then on (instances get overlays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ImageSource {
    /// A directory copied into each instance's working directory; it must hold an executable `init`.
    Directory { path: String },
    /// A bootable disk (with its own bootloader), used as the read-only backing file of each
    /// instance's qcow2 overlay.
    #[serde(rename_all = "camelCase")]
    Disk {
        path: String,
        /// `qcow2` or `raw`.
        format: String,
    },
    /// Direct kernel boot: each instance gets an empty OS disk of its own.
    #[serde(rename_all = "camelCase")]
    Kernel {
        kernel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
    },
}

impl ImageSource {
    /// A short word for tables: `directory`, `disk` or `kernel`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Directory { .. } => "directory",
            ImageSource::Disk { .. } => "disk",
            ImageSource::Kernel { .. } => "kernel",
        }
    }
}

/// An image in the gallery.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub id: String,
    /// `publisher:offer:sku:version`.
    pub urn: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
    pub source: ImageSource,
    /// The image runs the QEMU guest agent (`org.qemu.guest_agent.0`): readiness waits for it and
    /// extensions run in place through it. Without one, readiness is the boot-complete marker on
    /// the serial console and an extension change falls back to a reimage.
    #[serde(default)]
    pub guest_agent: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Image {
    pub fn urn(&self) -> ImageUrn {
        ImageUrn {
            publisher: self.publisher.clone(),
            offer: self.offer.clone(),
            sku: self.sku.clone(),
            version: self.version.clone(),
        }
    }

    /// The store key: the URN in lower case, since Azure URNs are case-insensitive.
    pub fn key(urn: &ImageUrn) -> String {
        urn.to_string().to_ascii_lowercase()
    }
}

/// Resolves `urn` against the gallery: an exact version, or the highest version for `latest`.
pub fn resolve<'a>(images: &'a [Image], urn: &ImageUrn) -> Option<&'a Image> {
    let family = images.iter().filter(|i| i.urn().same_family(urn));
    if urn.is_latest() {
        family.max_by_key(|i| Version::parse(&i.version))
    } else {
        family.into_iter().find(|i| i.version == urn.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(v: &str) -> Image {
        Image {
            id: String::new(),
            urn: format!("P:O:S:{v}"),
            publisher: "P".into(),
            offer: "O".into(),
            sku: "S".into(),
            version: v.into(),
            source: ImageSource::Directory { path: "/x".into() },
            guest_agent: false,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn latest_is_highest_numeric_version() {
        let all = vec![img("1.0.9"), img("1.0.10"), img("1.0.2")];
        let latest = resolve(&all, &ImageUrn::parse("p:o:s:latest").unwrap()).unwrap();
        assert_eq!(latest.version, "1.0.10");
        assert_eq!(resolve(&all, &ImageUrn::parse("P:O:S:1.0.2").unwrap()).unwrap().version, "1.0.2");
        assert!(resolve(&all, &ImageUrn::parse("P:O:S:2.0").unwrap()).is_none());
    }
}
