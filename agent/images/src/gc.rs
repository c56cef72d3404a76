//! Image garbage collection by disk usage, the kubelet's policy: when the
//! image filesystem is used at or above the high threshold, remove unused
//! images, least recently used first, until usage would be at the low
//! threshold. Never an image a pod uses, never one first seen less than the
//! minimum age ago. Pure: the agent gathers usage, images and times, and
//! carries the plan out.
//!
//! Unlike the kubelet, which counts each image's full size, a layer's bytes
//! count as freed only when the last image having it goes: images sharing
//! a base layer free it once.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// When and how much to collect (`--image-gc-high-threshold`,
/// `--image-gc-low-threshold`, `--image-minimum-gc-age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Percent of the image filesystem in use at or above which images are
    /// collected; 100 disables collection.
    pub high_threshold_percent: u8,
    /// Percent collection brings usage down to.
    pub low_threshold_percent: u8,
    /// Images first seen less than this long ago are kept.
    pub minimum_age: Duration,
}

impl GcPolicy {
    /// Checks the thresholds as the kubelet does: both 0–100, low below high.
    pub fn validate(&self) -> Result<(), String> {
        let (high, low) = (self.high_threshold_percent, self.low_threshold_percent);
        if high > 100 {
            return Err(format!("image GC high threshold {high}% is above 100%"));
        }
        if low > 100 {
            return Err(format!("image GC low threshold {low}% is above 100%"));
        }
        if low >= high {
            return Err(format!(
                "image GC low threshold ({low}%) must be less than the high threshold ({high}%)"
            ));
        }
        Ok(())
    }

    /// Whether collection runs at all (high threshold below 100).
    pub fn enabled(&self) -> bool {
        self.high_threshold_percent < 100
    }
}

/// The image filesystem's size and free space (statvfs), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Total bytes.
    pub capacity: u64,
    /// Bytes available to unprivileged users.
    pub available: u64,
}

impl DiskUsage {
    /// Percent in use, as the kubelet computes it: `100 - available * 100 /
    /// capacity` (integer division).
    pub fn used_percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        100 - (u128::from(self.available) * 100 / u128::from(self.capacity)).min(100) as u64
    }
}

/// An image as collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its canonical reference.
    pub reference: String,
    /// Its layers: an identity (the digest) and bytes on disk.
    pub layers: Vec<(String, u64)>,
    /// When the node first had it.
    pub first_seen: SystemTime,
    /// When a pod last used it (`first_seen` if none has).
    pub last_used: SystemTime,
    /// A pod on the node uses it now, or a container's root filesystem is
    /// made of it.
    pub in_use: bool,
}

/// What to remove, and what it would give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPlan {
    /// Usage when planned, percent.
    pub used_percent: u64,
    /// Bytes to free to get down to the low threshold.
    pub to_free: u64,
    /// References to remove, in order.
    pub remove: Vec<String>,
    /// Bytes removing them frees (layers no remaining image has).
    pub freed: u64,
}

impl GcPlan {
    /// Whether the plan frees what is needed (else the kubelet's
    /// `FreeDiskSpaceFailed`).
    pub fn enough(&self) -> bool {
        self.freed >= self.to_free
    }
}

/// The plan for `usage` under `policy` (pure). None when collection is
/// disabled or usage is below the high threshold.
pub fn plan(
    policy: &GcPolicy,
    usage: DiskUsage,
    images: &[Candidate],
    now: SystemTime,
) -> Option<GcPlan> {
    if !policy.enabled() || usage.capacity == 0 {
        return None;
    }
    let used_percent = usage.used_percent();
    if used_percent < u64::from(policy.high_threshold_percent) {
        return None;
    }
    let target_available = (u128::from(usage.capacity)
        * u128::from(100 - policy.low_threshold_percent.min(100))
        / 100) as u64;
    let to_free = target_available.saturating_sub(usage.available);
    // How many images have each layer: its bytes are freed with the last.
    let mut holders: HashMap<&str, usize> = HashMap::new();
    for img in images {
        let mut seen: Vec<&str> = img.layers.iter().map(|(d, _)| d.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        for d in seen {
            *holders.entry(d).or_default() += 1;
        }
    }
    let mut eligible: Vec<&Candidate> = images
        .iter()
        .filter(|i| !i.in_use)
        .filter(|i| {
            now.duration_since(i.first_seen)
                .is_ok_and(|age| age >= policy.minimum_age)
        })
        .collect();
    eligible.sort_by(|a, b| {
        (a.last_used, a.first_seen, &a.reference).cmp(&(b.last_used, b.first_seen, &b.reference))
    });
    let mut remove = Vec::new();
    let mut freed = 0u64;
    for img in eligible {
        if freed >= to_free {
            break;
        }
        let mut done: Vec<&str> = Vec::new();
        for (d, size) in &img.layers {
            if done.contains(&d.as_str()) {
                continue;
            }
            done.push(d);
            let n = holders.get_mut(d.as_str()).expect("counted above");
            *n -= 1;
            if *n == 0 {
                freed += size;
            }
        }
        remove.push(img.reference.clone());
    }
    Some(GcPlan {
        used_percent,
        to_free,
        remove,
        freed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn policy() -> GcPolicy {
        GcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            minimum_age: Duration::from_secs(120),
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn img(r: &str, layers: &[(&str, u64)], first_seen: u64, last_used: u64) -> Candidate {
        Candidate {
            reference: r.to_string(),
            layers: layers.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
            first_seen: t(first_seen),
            last_used: t(last_used),
            in_use: false,
        }
    }

    /// 1000 MB disk with `avail` MB free.
    fn disk(avail: u64) -> DiskUsage {
        DiskUsage {
            capacity: 1000 * MB,
            available: avail * MB,
        }
    }

    #[test]
    fn thresholds_are_checked_as_the_kubelet_does() {
        assert!(policy().validate().is_ok());
        let mut p = policy();
        p.low_threshold_percent = 85;
        assert!(p.validate().unwrap_err().contains("must be less than"));
        p.high_threshold_percent = 101;
        assert!(p.validate().is_err());
        p = policy();
        p.high_threshold_percent = 100;
        assert!(p.validate().is_ok());
        assert!(!p.enabled());
    }

    #[test]
    fn used_percent_rounds_as_the_kubelet_does() {
        assert_eq!(disk(1000).used_percent(), 0);
        assert_eq!(disk(151).used_percent(), 85); // 100 - 15
        assert_eq!(disk(150).used_percent(), 85);
        assert_eq!(disk(149).used_percent(), 86);
        assert_eq!(disk(0).used_percent(), 100);
        assert_eq!(
            DiskUsage {
                capacity: 0,
                available: 0
            }
            .used_percent(),
            0
        );
    }

    #[test]
    fn below_the_high_threshold_or_disabled_nothing_happens() {
        let images = [img("a", &[("l1", 100 * MB)], 0, 0)];
        let now = t(10_000);
        assert_eq!(plan(&policy(), disk(160), &images, now), None); // 84 %
        let mut off = policy();
        off.high_threshold_percent = 100;
        off.low_threshold_percent = 80;
        assert_eq!(plan(&off, disk(0), &images, now), None);
        // At the threshold it runs (>=, as the kubelet).
        assert!(plan(&policy(), disk(150), &images, now).is_some());
    }

    #[test]
    fn least_recently_used_first_until_the_low_threshold() {
        // 90 % used: 100 MB must be freed to reach 80 %.
        let images = [
            img("recent", &[("r", 150 * MB)], 0, 9_000),
            img("oldest", &[("o", 120 * MB)], 0, 1_000),
            img("older", &[("d", 100 * MB)], 0, 2_000),
            img("unused-long", &[("u", 10 * MB)], 0, 0),
        ];
        let p = plan(&policy(), disk(100), &images, t(10_000)).unwrap();
        assert_eq!(p.used_percent, 90);
        assert_eq!(p.to_free, 100 * MB);
        assert_eq!(p.remove, ["unused-long", "oldest"]);
        assert_eq!(p.freed, 130 * MB);
        assert!(p.enough());
    }

    #[test]
    fn in_use_and_young_images_are_never_removed() {
        let mut used = img("used", &[("a", 500 * MB)], 0, 0);
        used.in_use = true;
        let young = img("young", &[("b", 500 * MB)], 9_950, 9_950); // 50 s old
        let old = img("old", &[("c", 10 * MB)], 0, 100);
        let p = plan(&policy(), disk(0), &[used, young, old], t(10_000)).unwrap();
        assert_eq!(p.remove, ["old"]);
        assert_eq!(p.freed, 10 * MB);
        assert_eq!(p.to_free, 200 * MB);
        // The kubelet's FreeDiskSpaceFailed.
        assert!(!p.enough());
        // Two minutes later the young one may go.
        let young = img("young", &[("b", 500 * MB)], 9_950, 9_950);
        let p = plan(&policy(), disk(0), &[young], t(10_070)).unwrap();
        assert_eq!(p.remove, ["young"]);
    }

    #[test]
    fn a_shared_layer_is_freed_with_the_last_image_having_it() {
        // base (300 MB) shared by a and b, and by the used image c.
        let a = img("a", &[("base", 300 * MB), ("a1", 10 * MB)], 0, 1);
        let b = img("b", &[("base", 300 * MB), ("b1", 10 * MB)], 0, 2);
        let p = plan(&policy(), disk(100), &[a.clone(), b.clone()], t(10_000)).unwrap();
        // a alone frees 10 MB; with b the base goes too.
        assert_eq!(p.remove, ["a", "b"]);
        assert_eq!(p.freed, 320 * MB);
        let mut c = img("c", &[("base", 300 * MB)], 0, 0);
        c.in_use = true;
        let p = plan(&policy(), disk(100), &[a, b, c], t(10_000)).unwrap();
        assert_eq!(p.remove, ["a", "b"]);
        assert_eq!(p.freed, 20 * MB);
        assert!(!p.enough());
    }

    #[test]
    fn ties_are_broken_by_first_seen_then_name() {
        let images = [
            img("z", &[("1", MB)], 5, 0),
            img("y", &[("2", MB)], 5, 0),
            img("x", &[("3", MB)], 9, 0),
            img("w", &[("4", MB)], 1, 0),
        ];
        let p = plan(&policy(), disk(0), &images, t(10_000)).unwrap();
        assert_eq!(p.remove, ["w", "y", "z", "x"]);
    }
}
