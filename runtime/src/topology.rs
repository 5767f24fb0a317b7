//! Cartesian process topologies.
//!
//! # Standard section(s)
//! MPI-4.1 §8.5 (topology constructors), §8.5.4 (`MPI_Dims_create`), §8.5.5 (Cartesian
//! inquiry), §8.5.6 (`MPI_Cart_shift`).
//!
//! # Not yet implemented
//! Graph and distributed-graph topologies, `MPI_Cart_sub`, reordering (`reorder` is accepted
//! and ignored: ranks keep their order), neighborhood collectives.

use crate::communicator::{CommData, Communicator, Rank, SimpleCommunicator, sealed_data};
use crate::error::Error;

/// Fills the zero entries of `dims` with a balanced factorization of `nnodes` divided by the
/// non-zero entries, in non-increasing order (`MPI_Dims_create`).
///
/// # Errors
/// [`Error::UsageArgument`] for negative entries or when the fixed entries do not divide
/// `nnodes`.
pub fn dims_create(nnodes: Rank, dims: &mut [Rank]) -> Result<(), Error> {
    if nnodes < 0 || dims.iter().any(|d| *d < 0) {
        return Err(Error::UsageArgument(
            "negative node count or dimension".into(),
        ));
    }
    let fixed: Rank = dims.iter().filter(|d| **d > 0).product();
    let free = dims.iter().filter(|d| **d == 0).count();
    if fixed == 0 || nnodes % fixed != 0 {
        return Err(Error::UsageArgument(format!(
            "{nnodes} nodes do not divide into fixed dimensions {dims:?}"
        )));
    }
    let mut rest = nnodes / fixed;
    if free == 0 {
        return if rest == 1 {
            Ok(())
        } else {
            Err(Error::UsageArgument(format!(
                "dimensions {dims:?} do not make {nnodes} nodes"
            )))
        };
    }
    // Prime factors, largest first, each given to the currently smallest dimension.
    let mut factors = Vec::new();
    let mut f = 2;
    while rest > 1 {
        while rest % f == 0 {
            factors.push(f);
            rest /= f;
        }
        f += 1;
    }
    factors.reverse();
    let mut out = vec![1 as Rank; free];
    for f in factors {
        if let Some(m) = out.iter_mut().min_by_key(|x| **x) {
            *m *= f;
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    let mut it = out.into_iter();
    for d in dims.iter_mut().filter(|d| **d == 0) {
        *d = it.next().unwrap_or(1);
    }
    Ok(())
}

/// A communicator with a Cartesian topology (`MPI_Cart_create`).
#[derive(Debug)]
pub struct CartesianCommunicator {
    comm: SimpleCommunicator,
    dims: Vec<Rank>,
    periods: Vec<bool>,
}

impl crate::communicator::sealed::Sealed for CartesianCommunicator {
    #[allow(private_interfaces)]
    fn data(&self) -> &CommData {
        sealed_data(&self.comm)
    }
}

impl Communicator for CartesianCommunicator {}

impl CartesianCommunicator {
    /// Builds the topology over the first `dims` product ranks of `comm` (collective over
    /// `comm`); `None` at the other ranks.
    ///
    /// # Errors
    /// Mismatched `dims`/`periods`, non-positive dimensions, more grid points than ranks.
    pub fn new<C: Communicator>(
        comm: &C,
        dims: &[Rank],
        periods: &[bool],
        _reorder: bool,
    ) -> Result<Option<Self>, Error> {
        if dims.len() != periods.len() || dims.iter().any(|d| *d <= 0) {
            return Err(Error::UsageArgument(format!(
                "dims {dims:?} with periods {periods:?}"
            )));
        }
        let n: Rank = dims.iter().product();
        if n > comm.size() {
            return Err(Error::UsageArgument(format!(
                "a grid of {n} points on {} ranks",
                comm.size()
            )));
        }
        let color = if comm.rank() < n {
            crate::communicator::Color::with_value(0)
        } else {
            crate::communicator::Color::undefined()
        };
        Ok(comm
            .split_by_color_with_key(color, comm.rank())?
            .map(|c| Self {
                comm: c,
                dims: dims.to_vec(),
                periods: periods.to_vec(),
            }))
    }

    /// Extent of each dimension (`MPI_Cart_get`).
    pub fn dims(&self) -> &[Rank] {
        &self.dims
    }

    /// Whether each dimension wraps around.
    pub fn periods(&self) -> &[bool] {
        &self.periods
    }

    /// Coordinates of `rank`, row-major (`MPI_Cart_coords`).
    ///
    /// # Errors
    /// A rank out of range.
    pub fn rank_to_coordinates(&self, rank: Rank) -> Result<Vec<Rank>, Error> {
        if !(0..self.size()).contains(&rank) {
            return Err(Error::UsageInvalidRank {
                rank,
                size: self.size(),
            });
        }
        let mut c = vec![0; self.dims.len()];
        let mut r = rank;
        for i in (0..self.dims.len()).rev() {
            c[i] = r % self.dims[i];
            r /= self.dims[i];
        }
        Ok(c)
    }

    /// This process's coordinates.
    pub fn coordinates(&self) -> Vec<Rank> {
        self.rank_to_coordinates(self.rank()).unwrap_or_default()
    }

    /// Rank at `coords` (`MPI_Cart_rank`); periodic dimensions wrap.
    ///
    /// # Errors
    /// A coordinate outside a non-periodic dimension, or the wrong number of coordinates.
    pub fn coordinates_to_rank(&self, coords: &[Rank]) -> Result<Rank, Error> {
        if coords.len() != self.dims.len() {
            return Err(Error::UsageArgument(format!(
                "{} coordinates for {} dimensions",
                coords.len(),
                self.dims.len()
            )));
        }
        let mut r = 0;
        for (i, &x) in coords.iter().enumerate() {
            let d = self.dims[i];
            let x = if self.periods[i] {
                x.rem_euclid(d)
            } else if (0..d).contains(&x) {
                x
            } else {
                return Err(Error::UsageArgument(format!(
                    "coordinate {x} outside dimension {i} of extent {d}"
                )));
            };
            r = r * d + x;
        }
        Ok(r)
    }

    /// Source and destination of a shift by `disp` along `dim` (`MPI_Cart_shift`); `None` is
    /// `MPI_PROC_NULL` off the edge of a non-periodic dimension.
    ///
    /// # Errors
    /// A dimension out of range.
    pub fn shift(&self, dim: usize, disp: Rank) -> Result<(Option<Rank>, Option<Rank>), Error> {
        if dim >= self.dims.len() {
            return Err(Error::UsageArgument(format!(
                "dimension {dim} of {}",
                self.dims.len()
            )));
        }
        let me = self.coordinates();
        let at = |delta: Rank| {
            let mut c = me.clone();
            c[dim] += delta;
            self.coordinates_to_rank(&c).ok()
        };
        Ok((at(-disp), at(disp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims() {
        let mut d = [0, 0];
        dims_create(6, &mut d).unwrap();
        assert_eq!(d, [3, 2]);
        let mut d = [0, 0, 0];
        dims_create(8, &mut d).unwrap();
        assert_eq!(d, [2, 2, 2]);
        let mut d = [0, 3, 0];
        dims_create(12, &mut d).unwrap();
        assert_eq!(d, [2, 3, 2]);
        let mut d = [0];
        dims_create(7, &mut d).unwrap();
        assert_eq!(d, [7]);
        assert!(dims_create(7, &mut [2, 0]).is_err());
        let mut d = [0, 0];
        dims_create(1, &mut d).unwrap();
        assert_eq!(d, [1, 1]);
    }
}
