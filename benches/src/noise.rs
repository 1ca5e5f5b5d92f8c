//! Whether a ratio between two backends says more than the run's own noise.
//!
//! In-guest figures under TCG move by tens of percent from one boot to the next,
//! so a ratio of means says nothing by itself. Each backend's boots, in run order,
//! are split into two interleaved halves (1st, 3rd, ... against 2nd, 4th, ...):
//! the ratio of the halves is an A/A comparison of the backend with itself, made
//! in the same run, at the same spacing in time as the A/B one. The noise floor of
//! a row is the larger of the two backends' A/A deviations, as a factor; ours/peer
//! is a verdict only outside `[1/floor, floor]`.

use serde::Serialize;

/// What a row's ratio says, given the noise floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// ours/peer above the floor.
    Ahead,
    /// ours/peer below 1/floor.
    Behind,
    /// Within the floor: this run cannot tell.
    WithinNoise,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ahead => "ahead",
            Verdict::Behind => "behind",
            Verdict::WithinNoise => "within noise",
        }
    }
}

/// A/A ratio of one backend's samples (in run order): the mean of the even-indexed
/// ones over the mean of the odd-indexed ones. None with fewer than two samples or
/// a zero mean.
pub fn split_half_ratio(samples: &[f64]) -> Option<f64> {
    let half = |parity: usize| -> Option<f64> {
        let v: Vec<f64> = samples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, s)| *s)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let (a, b) = (half(0)?, half(1)?);
    (a > 0.0 && b > 0.0).then(|| a / b)
}

/// The spread of a row: each backend's samples, their A/A ratios, the floor and
/// the verdict on ours/peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Ours per boot, in run order.
    pub ours_samples: Vec<f64>,
    /// The peer per boot, in run order.
    pub peer_samples: Vec<f64>,
    /// Ours against itself ([`split_half_ratio`]).
    pub aa_ours: Option<f64>,
    /// The peer against itself.
    pub aa_peer: Option<f64>,
    /// The larger A/A deviation as a factor >= 1: max over both of
    /// `max(r, 1/r)`.
    pub noise_floor: Option<f64>,
    pub verdict: Option<Verdict>,
}

impl Spread {
    pub fn new(ours: &[f64], peer: &[f64]) -> Self {
        let aa_ours = split_half_ratio(ours);
        let aa_peer = split_half_ratio(peer);
        let factor = |r: f64| r.max(1.0 / r);
        let noise_floor = match (aa_ours, aa_peer) {
            (Some(a), Some(b)) => Some(factor(a).max(factor(b))),
            _ => None,
        };
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let verdict = match (mean(ours), mean(peer), noise_floor) {
            (Some(o), Some(p), Some(floor)) if p > 0.0 => {
                let ratio = o / p;
                Some(if ratio > floor {
                    Verdict::Ahead
                } else if ratio < 1.0 / floor {
                    Verdict::Behind
                } else {
                    Verdict::WithinNoise
                })
            }
            _ => None,
        };
        Spread {
            ours_samples: ours.to_vec(),
            peer_samples: peer.to_vec(),
            aa_ours,
            aa_peer,
            noise_floor,
            verdict,
        }
    }

    /// "min-max" of a backend's samples, for the table.
    pub fn range(samples: &[f64]) -> Option<(f64, f64)> {
        let min = samples.iter().copied().reduce(f64::min)?;
        let max = samples.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_interleave_in_run_order() {
        assert_eq!(split_half_ratio(&[]), None);
        assert_eq!(split_half_ratio(&[5.0]), None);
        assert_eq!(split_half_ratio(&[6.0, 3.0]), Some(2.0));
        // (1 + 3) / 2 over (2 + 4) / 2.
        assert_eq!(split_half_ratio(&[1.0, 2.0, 3.0, 4.0]), Some(4.0 / 6.0));
        assert_eq!(split_half_ratio(&[0.0, 2.0]), None);
    }

    #[test]
    fn a_gap_counts_only_beyond_the_floor() {
        // Each backend within 10% of itself: the floor is the larger deviation,
        // the peer's 110 / 100.
        let steady = Spread::new(&[130.0, 120.0], &[100.0, 110.0]);
        assert!((steady.noise_floor.unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(steady.verdict, Some(Verdict::Ahead));
        // The same means, but ours moves by 60% between boots: no verdict.
        let noisy = Spread::new(&[160.0, 90.0], &[100.0, 110.0]);
        assert_eq!(noisy.verdict, Some(Verdict::WithinNoise));
        let behind = Spread::new(&[70.0, 72.0], &[100.0, 101.0]);
        assert_eq!(behind.verdict, Some(Verdict::Behind));
        // One boot each: no floor, no verdict.
        let single = Spread::new(&[130.0], &[100.0]);
        assert_eq!((single.noise_floor, single.verdict), (None, None));
        assert_eq!(Spread::range(&[3.0, 1.0, 2.0]), Some((1.0, 3.0)));
    }
}
