//! Latency histograms use the exponential buckets of Prometheus native histograms at schema 3
//! (base γ = 2^(1/8)): bucket i holds response times in (2^((i-1)/8), 2^(i/8)] milliseconds.
//! Read as 2γ^i/(γ+1), every quantile is within (γ-1)/(γ+1) = 4.33% of the true value, the
//! bound DDSketch (Masson, Rim and Lee, VLDB 2019) proves for this mapping. Times are whole
//! microseconds, so the bounds are a table of integers, the same here and in the migration's
//! `pipe_latency_bucket`: no floating point decides a bucket, on either side.

use std::fmt::Write as _;

/// The lowest bucket: response times of 0 µs.
pub const FIRST_BUCKET: i32 = -80;

/// For buckets FIRST_BUCKET..=168, the longest time each holds, in whole microseconds:
/// floor(1000 · 2^(i/8)). Times above the last fall in bucket 169 (the integer column ends at
/// 35 minutes).
const UPPER_US: [i32; 249] = [
    0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12,
    13, 14, 15, 17, 18, 20, 22, 24, 26, 28, 31, 34, 37, 40, 44, 48, 52, 57, 62, 68, 74, 81, 88, 96,
    105, 114, 125, 136, 148, 162, 176, 192, 210, 229, 250, 272, 297, 324, 353, 385, 420, 458, 500,
    545, 594, 648, 707, 771, 840, 917, 1000, 1090, 1189, 1296, 1414, 1542, 1681, 1834, 2000, 2181,
    2378, 2593, 2828, 3084, 3363, 3668, 4000, 4362, 4756, 5187, 5656, 6168, 6727, 7336, 8000, 8724,
    9513, 10374, 11313, 12337, 13454, 14672, 16000, 17448, 19027, 20749, 22627, 24675, 26908,
    29344, 32000, 34896, 38054, 41498, 45254, 49350, 53817, 58688, 64000, 69792, 76109, 82997,
    90509, 98701, 107634, 117376, 128000, 139584, 152218, 165995, 181019, 197402, 215269, 234753,
    256000, 279169, 304437, 331990, 362038, 394805, 430538, 469506, 512000, 558339, 608874, 663981,
    724077, 789611, 861077, 939012, 1024000, 1116679, 1217748, 1327963, 1448154, 1579223, 1722155,
    1878024, 2048000, 2233359, 2435496, 2655927, 2896309, 3158447, 3444311, 3756048, 4096000,
    4466719, 4870992, 5311854, 5792618, 6316895, 6888623, 7512097, 8192000, 8933439, 9741984,
    10623709, 11585237, 12633791, 13777246, 15024194, 16384000, 17866878, 19483969, 21247419,
    23170475, 25267582, 27554493, 30048388, 32768000, 35733757, 38967938, 42494838, 46340950,
    50535164, 55108987, 60096776, 65536000, 71467514, 77935877, 84989677, 92681900, 101070328,
    110217974, 120193553, 131072000, 142935029, 155871754, 169979354, 185363800, 202140657,
    220435949, 240387107, 262144000, 285870059, 311743509, 339958708, 370727600, 404281314,
    440871899, 480774215, 524288000, 571740118, 623487019, 679917416, 741455200, 808562629,
    881743799, 961548431, 1048576000, 1143480236, 1246974039, 1359834832, 1482910400, 1617125258,
    1763487599, 1923096863, 2097152000,
];

/// The bucket of a response time in microseconds.
pub fn latency_bucket(us: i32) -> i32 {
    FIRST_BUCKET + UPPER_US.partition_point(|&upper| upper < us) as i32
}

/// The time a bucket stands for, in milliseconds: 2γ^i/(γ+1), computed as
/// `pipe_latency_bucket_ms` computes it.
pub fn bucket_ms(bucket: i32) -> f64 {
    2.0 * 2f64.powf(f64::from(bucket) / 8.0) / (1.0 + 2f64.powf(1.0 / 8.0))
}

/// A histogram of buckets, from its first non-empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    first: i32,
    counts: Vec<i32>,
}

impl Histogram {
    /// Counts one time in `bucket`.
    pub fn add(&mut self, bucket: i32) {
        if self.counts.is_empty() {
            self.first = bucket;
            self.counts.push(0);
        } else if bucket < self.first {
            let grow = (self.first - bucket) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = bucket;
        }
        let at = (bucket - self.first) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] += 1;
    }

    /// From an array read from PostgreSQL: its lower bound (the first bucket) and its counts.
    pub fn from_parts(first: i32, counts: Vec<i32>) -> Self {
        Self { first, counts }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in other.counts.iter().enumerate() {
            if *n != 0 {
                let bucket = other.first + i as i32;
                self.add(bucket);
                let at = (bucket - self.first) as usize;
                self.counts[at] += n - 1;
            }
        }
    }

    /// The q-quantile (0 < q ≤ 1) in milliseconds, as `pipe_histogram_quantile` reads it: the
    /// bucket of the ceil(q·n)-th smallest time. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: i64 = self.counts.iter().map(|n| i64::from(*n)).sum();
        if total == 0 {
            return None;
        }
        let wanted = ((q * total as f64).ceil() as i64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += i64::from(*n);
            if seen >= wanted {
                return Some(bucket_ms(self.first + i as i32));
            }
        }
        Some(bucket_ms(self.first + self.counts.len() as i32 - 1))
    }

    /// As PostgreSQL reads an array whose lower bound is the first bucket: `[40:42]={3,0,1}`.
    pub fn to_sql(&self) -> String {
        if self.counts.is_empty() {
            return "{}".to_owned();
        }
        let mut text = format!(
            "[{}:{}]={{",
            self.first,
            self.first + self.counts.len() as i32 - 1
        );
        for (i, n) in self.counts.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "{n}");
        }
        text.push('}');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_exponential_bounds_exactly() {
        for (i, upper) in UPPER_US.iter().enumerate() {
            let bucket = FIRST_BUCKET + i as i32;
            let exact = 1000.0 * 2f64.powf(f64::from(bucket) / 8.0);
            assert!(
                f64::from(*upper) <= exact + 1e-6 && exact < f64::from(*upper) + 1.0,
                "bucket {bucket}: {upper} for {exact}"
            );
        }
        assert_eq!(latency_bucket(1000), 0, "1 ms closes bucket 0");
        assert_eq!(latency_bucket(1001), 1);
        assert_eq!(latency_bucket(60_000_000), 127, "60 s");
        assert_eq!(latency_bucket(0), FIRST_BUCKET);
        assert_eq!(latency_bucket(i32::MAX), 169);
    }

    #[test]
    fn every_bucket_reads_within_the_stated_error() {
        let bound = (2f64.powf(0.125) - 1.0) / (2f64.powf(0.125) + 1.0);
        for us in (1000..60_000_000).step_by(997) {
            let read = bucket_ms(latency_bucket(us));
            let error = (read - f64::from(us) / 1000.0).abs() / (f64::from(us) / 1000.0);
            assert!(error <= bound + 1e-12, "{us} µs read as {read} ms");
        }
    }

    #[test]
    fn the_migration_holds_the_same_bounds() {
        let sql = include_str!("../../../migrations/0003_compact_checks_rollups_incidents.sql");
        let start = sql.find("-- BOUNDS").expect("the bounds in the migration");
        let list = &sql[start..];
        let list = &list[list.find('{').unwrap() + 1..list.find('}').unwrap()];
        let thresholds: Vec<i32> = list.split(',').map(|n| n.trim().parse().unwrap()).collect();
        let expected: Vec<i32> = UPPER_US.iter().map(|u| u + 1).collect();
        assert_eq!(thresholds, expected);
    }

    #[test]
    fn histograms_grow_both_ways_and_print_with_their_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.to_sql(), "{}");
        for bucket in [42, 40, 42, 44] {
            h.add(bucket);
        }
        assert_eq!(h.to_sql(), "[40:44]={1,0,2,0,1}");
    }

    #[test]
    fn merged_histograms_read_as_one() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        let mut both = Histogram::default();
        for (i, us) in [900, 1500, 250_000, 80_000, 80_000, 3_000_000]
            .iter()
            .enumerate()
        {
            let bucket = latency_bucket(*us);
            if i % 2 == 0 {
                a.add(bucket)
            } else {
                b.add(bucket)
            }
            both.add(bucket);
        }
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(a.quantile(0.5), Some(bucket_ms(latency_bucket(80_000))));
        assert_eq!(a.quantile(1.0), Some(bucket_ms(latency_bucket(3_000_000))));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
