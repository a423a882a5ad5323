//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table in which every
//! backend owns an almost equal share of slots, filled from per-backend permutations so
//! that removing one backend reassigns (nearly) only its own slots.

/// Slots in the table: a prime well above 100 × the backends a pool holds.
pub const TABLE_SIZE: usize = 65_537;

/// FNV-1a, then a finaliser: stable across processes and Rust versions, so several
/// balancers in front of the same edges agree on where a client goes.
pub fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV's low bits are weak for short keys
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The table: slot → index into the backend list it was built from.
#[derive(Debug, Clone)]
pub struct Table {
    slots: Vec<u32>,
}

impl Table {
    /// Builds the table for backends named `names` (their order is the index space).
    pub fn build<S: AsRef<[u8]>>(names: &[S]) -> Table {
        let n = names.len();
        if n == 0 {
            return Table { slots: Vec::new() };
        }
        let m = TABLE_SIZE as u64;
        let perms: Vec<(u64, u64)> = names
            .iter()
            .map(|name| {
                let offset = hash(name.as_ref(), 0x6d61_676c) % m;
                let skip = hash(name.as_ref(), 0x6576_3031) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut slots = vec![u32::MAX; TABLE_SIZE];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = (offset + next[i] * skip) % m;
                while slots[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                slots[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == TABLE_SIZE {
                    break 'fill;
                }
            }
        }
        Table { slots }
    }

    /// The backend index for a key, or `None` for an empty table.
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = (hash(key, 0) % TABLE_SIZE as u64) as usize;
        self.slots.get(slot).map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn shares_are_nearly_equal() {
        let t = Table::build(&names(7));
        let mut count = [0usize; 7];
        for s in &t.slots {
            count[*s as usize] += 1;
        }
        let (min, max) = (count.iter().min().unwrap(), count.iter().max().unwrap());
        assert!(max - min <= 1, "{count:?}");
    }

    #[test]
    fn removing_one_backend_moves_few_clients() {
        let before = names(10);
        let after: Vec<String> = before
            .iter()
            .filter(|n| !n.ends_with(".3:8080"))
            .cloned()
            .collect();
        let (a, b) = (Table::build(&before), Table::build(&after));
        let clients = 20_000;
        let mut moved = 0;
        for c in 0..clients {
            let key = format!("client-{c}");
            let old = &before[a.lookup(key.as_bytes()).unwrap()];
            let new = &after[b.lookup(key.as_bytes()).unwrap()];
            if old != new && !old.ends_with(".3:8080") {
                moved += 1;
            }
        }
        // only the removed backend's clients must move; Maglev moves a few more
        assert!(
            moved * 100 < clients * 3,
            "{moved} of {clients} clients of surviving backends moved"
        );
    }

    #[test]
    fn the_same_key_always_lands_on_the_same_backend() {
        let t = Table::build(&names(5));
        assert_eq!(t.lookup(b"203.0.113.7"), t.lookup(b"203.0.113.7"));
        assert_eq!(Table::build::<String>(&[]).lookup(b"x"), None);
    }
}
