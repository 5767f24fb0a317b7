//! Process groups: ordered sets of processes, named by their world ranks.
//!
//! A [`Group`] is a local object: building one never communicates. Communicators hold the
//! group of their members; [`crate::traits::Communicator::group`] returns it.
//!
//! # Standard section(s)
//! MPI-4.1 §7.3 (group management).
//!
//! # Not yet implemented
//! Groups of processes outside `MPI_COMM_WORLD` (there are none: no dynamic processes).

use std::sync::Arc;

use braid_engine::IdMap;

use crate::communicator::Rank;
use crate::error::Error;

/// `MPI_UNDEFINED`: the rank of a process that is not a member.
pub const UNDEFINED: Rank = -32766;

/// How two groups relate (`MPI_Group_compare`); MPI's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRelation {
    /// Same members in the same order (`MPI_IDENT`).
    Identical,
    /// Same members, other order (`MPI_SIMILAR`).
    Similar,
    /// Different members (`MPI_UNEQUAL`).
    Unequal,
}

/// An ordered set of processes (`MPI_Group`). Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    inner: Arc<GroupInner>,
}

#[derive(Debug, PartialEq, Eq)]
struct GroupInner {
    /// World rank of each group rank. Invariant: no duplicates.
    world: Vec<u32>,
    /// Group rank of each member's world rank; the inverse of `world`.
    inverse: IdMap<u32, Rank>,
    /// Every member's group rank is its world rank (`MPI_COMM_WORLD` and its duplicates):
    /// translating ranks is then the identity.
    identity: bool,
}

impl Group {
    /// A group of the given world ranks, in order.
    ///
    /// # Errors
    /// [`Error::UsageArgument`] when a world rank repeats.
    pub(crate) fn from_world_ranks(world: Vec<u32>) -> Result<Self, Error> {
        let mut inverse = IdMap::with_capacity_and_hasher(world.len(), Default::default());
        for (i, w) in world.iter().enumerate() {
            if inverse.insert(*w, i as Rank).is_some() {
                return Err(Error::UsageArgument(format!(
                    "process {w} appears twice in a group"
                )));
            }
        }
        let identity = world.iter().enumerate().all(|(i, w)| *w as usize == i);
        Ok(Self {
            inner: Arc::new(GroupInner {
                world,
                inverse,
                identity,
            }),
        })
    }

    /// The group of no processes (`MPI_GROUP_EMPTY`).
    pub fn empty() -> Self {
        Self {
            inner: Arc::new(GroupInner {
                world: Vec::new(),
                inverse: IdMap::default(),
                identity: true,
            }),
        }
    }

    /// Number of members (`MPI_Group_size`).
    pub fn size(&self) -> Rank {
        self.inner.world.len() as Rank
    }

    /// This process's rank in the group, `None` if it is not a member (`MPI_Group_rank`).
    pub fn rank(&self) -> Option<Rank> {
        self.rank_of_world(crate::core::with_core(|c| c.rank))
    }

    /// World ranks of the members, in group order.
    pub(crate) fn world_ranks(&self) -> &[u32] {
        &self.inner.world
    }

    /// World rank of group rank `r` (unchecked: `r` must be in range).
    pub(crate) fn world_of(&self, r: usize) -> u32 {
        self.inner.world[r]
    }

    /// Group rank of the process with world rank `w`.
    pub(crate) fn rank_of_world(&self, w: u32) -> Option<Rank> {
        if self.inner.identity {
            return ((w as usize) < self.inner.world.len()).then_some(w as Rank);
        }
        self.inner.inverse.get(&w).copied()
    }

    /// Whether every member's group rank is its world rank.
    pub(crate) fn is_identity(&self) -> bool {
        self.inner.identity
    }

    fn check(&self, r: Rank) -> Result<u32, Error> {
        if (0..self.size()).contains(&r) {
            Ok(self.inner.world[r as usize])
        } else {
            Err(Error::UsageInvalidRank {
                rank: r,
                size: self.size(),
            })
        }
    }

    /// The members with the given ranks, in that order (`MPI_Group_incl`).
    ///
    /// # Errors
    /// A rank out of range or given twice.
    pub fn include(&self, ranks: &[Rank]) -> Result<Self, Error> {
        let world = ranks
            .iter()
            .map(|r| self.check(*r))
            .collect::<Result<_, _>>()?;
        Self::from_world_ranks(world)
    }

    /// The members without the given ranks, in group order (`MPI_Group_excl`).
    ///
    /// # Errors
    /// A rank out of range or given twice.
    pub fn exclude(&self, ranks: &[Rank]) -> Result<Self, Error> {
        let mut drop = vec![false; self.inner.world.len()];
        for r in ranks {
            self.check(*r)?;
            if std::mem::replace(&mut drop[*r as usize], true) {
                return Err(Error::UsageArgument(format!("rank {r} excluded twice")));
            }
        }
        let world = (self.inner.world.iter().zip(drop))
            .filter(|(_, d)| !d)
            .map(|(w, _)| *w)
            .collect();
        Self::from_world_ranks(world)
    }

    /// Expands `(first, last, stride)` triplets into ranks (`MPI_Group_range_incl`).
    fn expand(&self, ranges: &[(Rank, Rank, Rank)]) -> Result<Vec<Rank>, Error> {
        let mut out = Vec::new();
        for &(first, last, stride) in ranges {
            if stride == 0 {
                return Err(Error::UsageArgument("range with stride 0".into()));
            }
            self.check(first)?;
            self.check(last)?;
            let mut r = first;
            while (stride > 0 && r <= last) || (stride < 0 && r >= last) {
                out.push(r);
                r += stride;
            }
        }
        Ok(out)
    }

    /// Members in `(first, last, stride)` ranges, in range order (`MPI_Group_range_incl`).
    ///
    /// # Errors
    /// A rank out of range, a zero stride, a rank named twice.
    pub fn range_include(&self, ranges: &[(Rank, Rank, Rank)]) -> Result<Self, Error> {
        self.include(&self.expand(ranges)?)
    }

    /// Members outside the ranges, in group order (`MPI_Group_range_excl`).
    ///
    /// # Errors
    /// As [`Group::range_include`].
    pub fn range_exclude(&self, ranges: &[(Rank, Rank, Rank)]) -> Result<Self, Error> {
        self.exclude(&self.expand(ranges)?)
    }

    /// Members of `self`, then members of `other` not in `self` (`MPI_Group_union`).
    pub fn union(&self, other: &Self) -> Self {
        let mut world = self.inner.world.clone();
        world.extend((other.inner.world.iter()).filter(|w| !self.inner.inverse.contains_key(w)));
        Self::from_world_ranks(world).unwrap_or_else(|_| Self::empty())
    }

    /// Members of `self` that are also in `other`, in `self`'s order
    /// (`MPI_Group_intersection`).
    pub fn intersection(&self, other: &Self) -> Self {
        let world = (self.inner.world.iter())
            .filter(|w| other.inner.inverse.contains_key(w))
            .copied()
            .collect();
        Self::from_world_ranks(world).unwrap_or_else(|_| Self::empty())
    }

    /// Members of `self` not in `other`, in `self`'s order (`MPI_Group_difference`).
    pub fn difference(&self, other: &Self) -> Self {
        let world = (self.inner.world.iter())
            .filter(|w| !other.inner.inverse.contains_key(w))
            .copied()
            .collect();
        Self::from_world_ranks(world).unwrap_or_else(|_| Self::empty())
    }

    /// Rank in `other` of the process with rank `rank` here (`MPI_Group_translate_ranks`);
    /// `None` if it is not in `other`.
    pub fn translate_rank(&self, rank: Rank, other: &Self) -> Option<Rank> {
        let w = self.check(rank).ok()?;
        other.rank_of_world(w)
    }

    /// [`Group::translate_rank`] for many ranks; [`UNDEFINED`] for non-members and ranks out
    /// of range.
    pub fn translate_ranks(&self, ranks: &[Rank], other: &Self) -> Vec<Rank> {
        (ranks.iter())
            .map(|r| self.translate_rank(*r, other).unwrap_or(UNDEFINED))
            .collect()
    }

    /// How `self` and `other` relate (`MPI_Group_compare`).
    pub fn compare(&self, other: &Self) -> GroupRelation {
        if self.inner.world == other.inner.world {
            GroupRelation::Identical
        } else if self.inner.world.len() == other.inner.world.len()
            && (self.inner.world.iter()).all(|w| other.inner.inverse.contains_key(w))
        {
            GroupRelation::Similar
        } else {
            GroupRelation::Unequal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(v: &[u32]) -> Group {
        Group::from_world_ranks(v.to_vec()).unwrap()
    }

    #[test]
    fn algebra() {
        let a = g(&[0, 1, 2, 3, 4, 5]);
        let b = g(&[5, 3, 7]);
        assert_eq!(a.union(&b).world_ranks(), &[0, 1, 2, 3, 4, 5, 7]);
        assert_eq!(b.union(&a).world_ranks(), &[5, 3, 7, 0, 1, 2, 4]);
        assert_eq!(a.intersection(&b).world_ranks(), &[3, 5]);
        assert_eq!(b.intersection(&a).world_ranks(), &[5, 3]);
        assert_eq!(a.difference(&b).world_ranks(), &[0, 1, 2, 4]);
        assert_eq!(a.include(&[4, 0]).unwrap().world_ranks(), &[4, 0]);
        assert_eq!(a.exclude(&[4, 0]).unwrap().world_ranks(), &[1, 2, 3, 5]);
        assert!(a.include(&[1, 1]).is_err());
        assert!(matches!(
            a.include(&[6]),
            Err(Error::UsageInvalidRank { rank: 6, size: 6 })
        ));
        assert!(a.exclude(&[2, 2]).is_err());
        assert_eq!(
            a.range_include(&[(0, 5, 2)]).unwrap().world_ranks(),
            &[0, 2, 4]
        );
        assert_eq!(
            a.range_include(&[(5, 0, -3)]).unwrap().world_ranks(),
            &[5, 2]
        );
        assert_eq!(
            a.range_exclude(&[(1, 4, 1)]).unwrap().world_ranks(),
            &[0, 5]
        );
        assert!(a.range_include(&[(0, 5, 0)]).is_err());
        assert_eq!(
            a.translate_ranks(&[0, 3, 5, 9], &b),
            vec![UNDEFINED, 1, 0, UNDEFINED]
        );
        assert_eq!(b.translate_rank(2, &a), None);
        assert_eq!(a.compare(&a.clone()), GroupRelation::Identical);
        assert_eq!(g(&[3, 5]).compare(&g(&[5, 3])), GroupRelation::Similar);
        assert_eq!(a.compare(&b), GroupRelation::Unequal);
        assert_eq!(Group::empty().size(), 0);
        assert_eq!(a.union(&Group::empty()), a);
    }
}
